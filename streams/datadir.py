"""One gridwatch per data directory: an exclusive lock on ``<site.data_dir>/gridwatch.lock``.

Two runtimes on one data directory would interleave commits to one store, spool and evidence
folder and each believe its own device slots. The first takes an exclusive ``flock`` on the lock
file and writes its pid there; a second one finds the lock held and stops at once with one line
naming the directory and the pid that holds it. The kernel drops the lock when its process ends in
any way (kill -9 included), so a crash never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirBusy(RuntimeError):
    """Another gridwatch process (or runtime) holds the data directory."""


class DataDirLock:
    NAME = "gridwatch.lock"

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise DataDirBusy(f"another gridwatch (pid {holder}) is using the data directory {self.path.parent}: "
                              "stop it first, or give this one its own site.data_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:  # a runtime dropped without stopping still frees its directory
        try:
            self.release()
        except Exception:  # noqa: BLE001
            pass
