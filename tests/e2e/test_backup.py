"""Scheduled backup and restore on a real Kubernetes, as docs/KUBERNETES.md tells a user.

A 3-node release with `backup.enabled` (schedule suspended) gets keys, deletions and TTL
keys; a Job created from its CronJob writes a backup to the `<release>-backups` claim and
reports it to the nodes. A second release, 4 nodes, installed in the same namespace with
`restore.enabled` from that claim, restores it in its post-install hook; through its own
Service every key reads back at its version and every deleted key stays deleted.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.support import PortForward, Release, installed, say, wait_for

from ringkv.client import Client, NotFound

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

KEYS = 300
SMALL = ["--set", "persistence.enabled=false", "--set", "podDisruptionBudget.enabled=false"]


@pytest.fixture(scope="module")
def written() -> dict[str, str]:
    """key -> the version the backed-up keys were written with (shared by the two tests)."""
    return {}


@pytest.fixture(scope="module")
def deleted() -> dict[str, str]:
    """key -> the version of its deletion (a tombstone the restore must keep)."""
    return {}


@pytest.fixture(scope="module")
def source(tools: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Release]:
    with installed(tools, request, "ringkv-bk", 3, 3, values=[
            *SMALL, "--set", "backup.enabled=true", "--set", "backup.suspend=true",
            "--set", "backup.retention=2"]) as release:
        yield release


def forwarded(release: Release) -> PortForward:
    return PortForward(release.kube, f"svc/{release.name}", log_dir=release.log_dir).start()


def trigger(release: Release, cronjob: str, job: str, tmp_path: Path) -> None:
    """A Job from the CronJob's template, as `kubectl create job --from=cronjob/...` makes
    one: kubectl 1.31 does that only for batch/v1 CronJobs, and Kubernetes 1.20 serves
    batch/v1beta1 (the kubectl of a 1.20 cluster does it for both)."""
    cron = release.kube.get_json("cronjob", cronjob)
    template = cron["spec"]["jobTemplate"]
    owner = {"apiVersion": cron["apiVersion"], "kind": "CronJob", "name": cronjob,
             "uid": cron["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    manifest = tmp_path / f"{job}.json"
    manifest.write_text(json.dumps({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job, "labels": template["metadata"].get("labels", {}),
                     "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                     "ownerReferences": [owner]},
        "spec": template["spec"]}))
    say(f"a Job {job} from cronjob/{cronjob}")
    release.kube.kubectl("create", "-f", str(manifest))


def last_json(logs: str) -> dict[str, object]:
    """The summary a ringkv backup or restore prints last."""
    return json.loads(logs.strip().splitlines()[-1])


def test_a_job_from_the_cronjob_writes_a_backup_to_the_claim(
        source: Release, written: dict[str, str], deleted: dict[str, str], tmp_path: Path) -> None:
    forward = forwarded(source)
    try:
        with Client(forward.url, token=source.token, timeout=10) as client:
            wait_for(lambda: client.put("probe", b"x"), 120, "the first quorum write")
            assert client.cluster()["cluster"] == source.name  # backups are named after it
            for i in range(KEYS):
                key = f"k/{i:03d}"
                written[key] = client.put(key, f"value {i}".encode(),
                                                content_type="text/plain")
            for i in range(0, KEYS, 10):
                deleted[f"k/{i:03d}"] = client.delete(f"k/{i:03d}")  # deleted: tombstones
            client.put("ttl", b"later", ttl=3600)
        job = f"{source.name}-backup-e2e"
        trigger(source, f"{source.name}-backup", job, tmp_path)
        source.kube.kubectl("wait", "--for=condition=complete", f"job/{job}", "--timeout=600s",
                            timeout=660)
        summary = last_json(source.kube.kubectl("logs", f"job/{job}").stdout)
        say(f"backup: {summary}")
        name = str(summary["backup"]).removeprefix("/backups/")
        assert summary["backup"] == f"/backups/{name}" and name.startswith(f"{source.name}-")
        assert summary["records"] == KEYS + 2 and summary["tombstones"] == KEYS // 10  # + probe, ttl
        # The nodes know it: the ringkv_backup_* metrics (and an alert on them) follow it.
        request = urllib.request.Request(forward.ensure().url + "/v1/backup/last",
                                         headers={"Authorization": f"Bearer {source.token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.load(answer)["last"]["name"] == name
        source.progress.add(name)
    finally:
        forward.close()


def test_a_second_release_restores_it_and_reads_every_key_back(
        tools: tuple[str, str], request: pytest.FixtureRequest, source: Release,
        written: dict[str, str], deleted: dict[str, str]) -> None:
    if not source.progress:
        pytest.skip("the backup test did not get as far as a backup")
    with installed(tools, request, "ringkv-rs", 4, 3, namespace=source.kube.namespace, values=[
            *SMALL, "--set", "restore.enabled=true",
            "--set", f"restore.claim={source.name}-backups", "--set", "restore.backup=latest",
            ]) as target:
        summary = last_json(target.kube.kubectl("logs", f"job/{target.name}-restore").stdout)
        say(f"restore: {summary}")
        assert summary["backup"] in source.progress and summary["merged"] == KEYS + 2
        forward = forwarded(target)
        try:
            with Client(forward.url, token=target.token, timeout=10) as client:
                for key, version in written.items():
                    if key in deleted:
                        with pytest.raises(NotFound):
                            client.get(key)
                        replicas = client.replicas(key)["replicas"]
                        assert {r["version"] for r in replicas} == {deleted[key]}  # type: ignore[index]
                    else:
                        entry = client.get(key)
                        assert (entry.version, entry.content_type) == (version, "text/plain")
                assert client.get("ttl").value == b"later"
        finally:
            forward.close()
