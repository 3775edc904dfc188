"""The Helm chart as `helm template` renders it, for the chart tests and the operator tests.

helm comes from `.tools/bin` (`make tools` fetches it) or PATH; tests that need it are
marked `needs_helm` (a skip, which `CI=true` turns into a failure: see tests/conftest.py).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "ringkv"

Doc = dict[str, Any]


def _find_helm() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    return str(local) if os.access(local, os.X_OK) else shutil.which("helm")


HELM = _find_helm()
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm not found: `make tools` fetches it into .tools/bin"
)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; on an unexpected failure show its stderr (the template error)."""
    assert HELM is not None
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


@functools.cache
def render(*args: str, release: str, namespace: str) -> tuple[Doc, ...]:
    """The chart's manifests (test hooks included) for these extra `helm template` args."""
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}
