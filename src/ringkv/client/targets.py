"""Where backups are kept, behind one small interface.

`Target` is all the backup and restore code uses: list the backups, write the files of a
new one, make it complete (the manifest goes last), read the files of a complete one,
delete one. `DirectoryTarget` keeps them in a local directory (in Kubernetes: the
backup claim). An S3-compatible bucket would be one more class with these methods,
keeping the files as objects under `<prefix>/<backup>/` and putting `manifest.json` last
(objects are never renamed, so the manifest alone marks a backup complete), chosen by an
`s3://` location in `open_target`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from ringkv.client.archive import MANIFEST, ArchiveError

PARTIAL = ".partial"
# `<cluster>-<UTC time>`: the time sorts as text and says when the backup began.
_NAME = re.compile(r"(?P<cluster>.+)-(?P<time>[0-9]{8}T[0-9]{6}\.[0-9]{3}Z)")


def backup_time(name: str) -> str | None:
    """The time part of a backup's name, or None if it is not one."""
    match = _NAME.fullmatch(name)
    return match.group("time") if match else None


def backup_cluster(name: str) -> str | None:
    match = _NAME.fullmatch(name)
    return match.group("cluster") if match else None


class Target(Protocol):
    """A place that holds backups (see the module docstring)."""

    def backups(self) -> dict[str, bool]:
        """Every backup by name: True when complete."""

    def create(self, backup: str, file: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A new file of a backup that is being written."""

    def commit(self, backup: str, manifest: bytes) -> str:
        """Write the manifest, making the backup complete; where it is now."""

    def open(self, backup: str, file: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A file of a complete backup (FileNotFoundError when absent)."""

    def delete(self, backup: str) -> None:
        """Remove a backup, complete or not (nothing when absent)."""


class DirectoryTarget:
    """Backups as directories under `root`; one being written is `<name>.partial`."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, backup: str, complete: bool = True) -> str:
        return os.path.join(self.root, backup if complete else backup + PARTIAL)

    def backups(self) -> dict[str, bool]:
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return {}
        found: dict[str, bool] = {}
        for entry in entries:
            name = entry.removesuffix(PARTIAL)
            if backup_time(name) is None or not os.path.isdir(os.path.join(self.root, entry)):
                continue
            found[name] = found.get(name, False) or (
                entry == name and os.path.exists(os.path.join(self.root, name, MANIFEST)))
        return found

    @contextlib.contextmanager
    def create(self, backup: str, file: str) -> Iterator[BinaryIO]:
        directory = self._path(backup, complete=False)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, file), "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())

    def commit(self, backup: str, manifest: bytes) -> str:
        partial, final = self._path(backup, complete=False), self._path(backup)
        tmp = os.path.join(partial, MANIFEST + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(manifest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(partial, MANIFEST))
        _fsync_dir(partial)
        os.rename(partial, final)  # fails if a backup of that name exists: never replaced
        _fsync_dir(self.root)
        return final

    @contextlib.contextmanager
    def open(self, backup: str, file: str) -> Iterator[BinaryIO]:
        with open(os.path.join(self._path(backup), file), "rb") as fh:
            yield fh

    def delete(self, backup: str) -> None:
        for path in (self._path(backup, complete=False), self._path(backup)):
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_target(location: str) -> Target:
    """The target a `--to` location names: a directory (the only kind so far)."""
    return DirectoryTarget(location)


def locate(path: str, latest: bool) -> tuple[Target, str]:
    """The backup a restore names: the backup directory itself, or with `latest` the newest
    complete backup in the directory `path`. ArchiveError says why there is none."""
    if latest:
        target = open_target(path)
        complete = [n for n, done in target.backups().items() if done]
        if not complete:
            raise ArchiveError(f"{path}: no complete backup here")
        return target, max(complete, key=lambda n: backup_time(n) or "")
    path = os.path.normpath(path)
    root, name = os.path.split(path)
    if name.endswith(PARTIAL):
        raise ArchiveError(f"{path}: this backup never completed (it has no {MANIFEST})")
    if not os.path.isdir(path):
        raise ArchiveError(f"{path}: no such backup directory")
    if not os.path.exists(os.path.join(path, MANIFEST)):
        raise ArchiveError(f"{path}: no {MANIFEST}, so not a complete backup "
                           "(pass --latest to take the newest backup in a directory of them)")
    return open_target(root or "."), name
