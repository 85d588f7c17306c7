"""Shared machinery for the real servers used by tests, benchmarks and local runs.

Every server:

* runs as a child process in its own session (process group), with its stdout/stderr in
  ``<workdir>/server.log``;
* binds only to 127.0.0.1, on ports picked free at start;
* is waited for until it answers (``start()`` raises :class:`ServerStartError` with the log tail
  otherwise);
* is stopped with SIGTERM to its process group, then SIGKILL after a timeout. ``stop()`` also runs
  at interpreter exit, and on Linux the child gets SIGTERM if the process that started it dies
  (``die_with_parent``), so a crashed test run leaves no orphan broker behind.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Sequence

HOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server could not be started (binary missing, crashed, or never became ready)."""


class MissingBinaryError(ServerStartError):
    """A required executable is not installed; the message names what provides it."""


def require_binary(name: str, provided_by: str) -> str:
    """Absolute path of ``name`` on PATH (also /usr/sbin, /sbin), or MissingBinaryError."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if not path:
        raise MissingBinaryError(f"`{name}` not found on PATH; it is provided by {provided_by}")
    return path


def free_ports(n: int = 1, host: str = HOST) -> list[int]:
    """``n`` distinct ports that are free on ``host`` right now (all sockets held until all are
    picked, so the ports differ). A small race with other processes remains; servers retry a
    start whose log says the address is in use."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = HOST, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cache_root() -> Path:
    """``$GRIDWATCH_CACHE``, else ``$XDG_CACHE_HOME/gridwatch``, else ``~/.cache/gridwatch``."""
    env = os.environ.get("GRIDWATCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gridwatch"


def maven_fetch(pom: Path, dest: Path, *, timeout: float = 900.0) -> Path:
    """Copy the runtime dependencies of ``pom`` into ``dest`` (a lib/ directory) once.

    Safe under concurrent callers (file lock); a completed fetch is marked by ``dest/.complete``
    and reused. Returns ``dest``."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    mvn = require_binary("mvn", "the Debian package `maven` (with `openjdk-17-jre-headless`)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".lib-", dir=dest.parent))
        cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=tmp)
        except subprocess.TimeoutExpired as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ServerStartError(f"maven fetch for {pom.name} timed out after {timeout:.0f}s") from e
        if proc.returncode != 0 or not any(tmp.glob("*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            out = (proc.stdout + proc.stderr)[-4000:]
            raise ServerStartError(f"maven fetch for {pom.name} failed (rc={proc.returncode}):\n{out}")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return dest


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


_LIVE: "weakref.WeakSet[ManagedServer]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for srv in list(_LIVE):
        with contextlib.suppress(Exception):
            srv.stop()


class ManagedServer:
    """Base class: subclasses implement :meth:`_prepare` (write config, pick ports),
    :meth:`_command` and :meth:`_ready`.

    ``workdir``: where config, data and ``server.log`` live; a fresh temp dir by default, removed
    by ``stop()`` unless ``keep_workdir`` (a dir you pass is never removed).
    ``die_with_parent``: the child receives SIGTERM when the *thread* that started it exits
    (Linux PDEATHSIG semantics): start servers from the main thread or a long-lived one, or set
    it False.
    """

    name = "server"
    binary_hint = ""

    def __init__(self, *, workdir: str | os.PathLike | None = None, startup_timeout: float = 30.0,
                 stop_timeout: float = 10.0, keep_workdir: bool = False, die_with_parent: bool = True,
                 env: dict[str, str] | None = None):
        self.host = HOST
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"gridwatch-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_workdir = keep_workdir
        self.die_with_parent = die_with_parent
        self.extra_env = dict(env or {})
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None  # seconds the last start took until ready
        self._prepared = False
        self._lock = threading.RLock()

    # -- subclass hooks -------------------------------------------------------------------
    def _prepare(self, new_ports: bool) -> None:
        """Write config files; pick ports if ``new_ports`` (False on restart)."""

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_start(self) -> None:
        """Runs once the server answers (e.g. post-start setup)."""

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "ManagedServer":
        with self._lock:
            if self.running:
                return self
            attempts = 3 if not self._prepared else 1  # a restart keeps its ports: no retry
            for attempt in range(attempts):
                self._prepare(new_ports=not self._prepared)
                self._prepared = True
                try:
                    self._spawn_and_wait()
                    self._after_start()
                    return self
                except ServerStartError as e:
                    self._kill()
                    in_use = "in use" in self.log_tail(4000).lower()
                    if in_use and attempt + 1 < attempts:
                        self._prepared = False  # port race lost: pick new ports
                        continue
                    if not isinstance(e, MissingBinaryError):
                        raise ServerStartError(f"{e}\n--- {self.log_path} (tail) ---\n{self.log_tail()}") from None
                    raise
            raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        cmd = list(self._command())
        env = {**os.environ, **self.extra_env}
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None)
            except FileNotFoundError as e:
                raise MissingBinaryError(f"{cmd[0]} not found; provided by {self.binary_hint}") from e
        _LIVE.add(self)
        deadline = t0 + self.startup_timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(f"{self.name} exited with code {rc} during startup")
            try:
                if self._ready():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self.name} not ready after {self.startup_timeout:.0f}s")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # reap anything left in the group (the group id is the leader's pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Terminate (then kill after ``stop_timeout``); remove the temp workdir."""
        with self._lock:
            self._kill()
            _LIVE.discard(self)
            if self._own_dir and not self.keep_workdir and self.workdir.exists():
                shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, downtime: float = 0.0) -> None:
        """Stop the process (workdir, ports and data kept) and start it again."""
        with self._lock:
            self._kill()
            if downtime:
                time.sleep(downtime)
            self.start()

    def kill(self) -> None:
        """SIGKILL the server now (a crash, for fault tests); ``start()`` brings it back."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-n:].decode("utf-8", "replace")

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop_keep_log()
            raise

    def stop_keep_log(self) -> None:
        with self._lock:
            self._kill()
            _LIVE.discard(self)

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; atexit covers interpreter shutdown
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)


def run_checked(cmd: Sequence[str], *, cwd: Path | None = None, what: str = "",
                input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a helper command (openssl, mosquitto_passwd ...); raise ServerStartError with its
    output when it fails."""
    try:
        p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, input=input, timeout=timeout)
    except FileNotFoundError as e:
        raise MissingBinaryError(f"{cmd[0]} not found ({what})") from e
    if p.returncode != 0:
        raise ServerStartError(f"{what or cmd[0]} failed (rc={p.returncode}): "
                               f"{(p.stdout + p.stderr).decode('utf-8', 'replace')[-2000:]}")
    return p


Waiter = Callable[[], bool]
