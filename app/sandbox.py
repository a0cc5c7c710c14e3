"""JSONata from callers the gateway does not trust, run in worker processes it can kill.

The test endpoint (`POST /api/orders/expressions/jsonata`, open to the read-only ops role) and
`orderhook jsonata test` compile and evaluate whatever expression they are given. None of that
may run in the gateway's own process: jsonatapy holds the GIL while it works (so a thread would
stall the event loop just the same), and some built-ins ($pad, $join, $replace) allocate in one
step that its time limit does not interrupt. Each request goes to a worker process
(app/sandbox_worker.py) instead, bounded by

- jsonatapy's own limits (SANDBOX_LIMITS: time, call depth, sequence length), which stop most
  hostile expressions with a precise answer;
- a cap on the worker's address space (WORKER_MEMORY_BYTES): an allocation past it aborts it;
- a deadline kept here (DEADLINE_S): past it the worker is killed;
- a CPU-time limit, and death with the gateway, in case the gateway is gone.

A worker that died is replaced by the next request. At most WORKERS requests run at once; one
that finds no worker free within QUEUE_WAIT_S gets SandboxBusy (503: try again).

The protocol, one JSON object per line each way: {"expression", "document" (JSON text)} ->
{"result": bool}, or {"error": "compile" | "evaluation", "message", "limit", "position"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import orjson

from app.filters import (
    EvaluationError,
    ExpressionError,
    Limits,
    check_length,
    compile_expression,
)

log = logging.getLogger("orderhook.sandbox")

WORKERS = 2
WORKER_MEMORY_BYTES = 256 * 1024 * 1024  # address space: ~25 MiB of it is Python and jsonatapy
SANDBOX_LIMITS = Limits(timeout_ms=1000)
# Start, compile (with the error-position search), parse the document, evaluate: past this
# the worker is killed. Above SANDBOX_LIMITS.timeout_ms, which answers more precisely.
DEADLINE_S = 3.0
QUEUE_WAIT_S = 1.0
ANSWER_MAX_BYTES = 64 * 1024  # one answer line; messages are cut to MAX_MESSAGE_CHARS


class SandboxBusy(Exception):
    """Every worker stayed busy for QUEUE_WAIT_S."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.sandbox_worker",
            str(WORKER_MEMORY_BYTES),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # a Rust abort's message: the answer says it
            limit=ANSWER_MAX_BYTES,
        )
        return cls(process)

    async def ask(self, request: bytes) -> dict[str, Any] | None:
        """The worker's answer, or None if it died (or said more than an answer may)."""
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:
            return None
        try:
            stdin.write(request)
            await stdin.drain()
            line = await stdout.readline()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            return None
        if not line.endswith(b"\n"):
            return None
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def stop(self) -> int:
        """Kill it (if it still runs) and reap it; its exit status (negative: a signal)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        return await self.process.wait()


class Sandbox:
    def __init__(self, workers: int = WORKERS) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()

    async def test(self, expression: str, document: str) -> bool:
        """True when `expression` yields `true` on `document` (JSON text); ExpressionError,
        EvaluationError (`limit` set when a limit stopped it) or SandboxBusy otherwise."""
        check_length(expression)
        request = orjson.dumps({"expression": expression, "document": document}) + b"\n"
        try:
            await asyncio.wait_for(self._slots.acquire(), QUEUE_WAIT_S)
        except TimeoutError:
            raise SandboxBusy(
                f"every JSONata worker stayed busy for {QUEUE_WAIT_S:g} s; try again"
            ) from None
        try:
            return _result(await self._ask(request))
        finally:
            self._slots.release()

    async def _ask(self, request: bytes) -> dict[str, Any]:
        worker = self._idle.pop() if self._idle else await self._start()
        try:
            async with asyncio.timeout(DEADLINE_S):
                reply = await worker.ask(request)
        except TimeoutError:
            await self._discard(worker)
            raise EvaluationError(
                f"stopped at the time limit ({DEADLINE_S:g} s): the worker was killed", "time"
            ) from None
        except BaseException:  # cancelled: a worker whose answer was not read is of no use
            await self._discard(worker)
            raise
        if reply is None:
            raise _died(await self._discard(worker))
        self._idle.append(worker)
        return reply

    async def _start(self) -> _Worker:
        worker = await _Worker.start()
        self._running.add(worker)
        return worker

    async def _discard(self, worker: _Worker) -> int:
        self._running.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        return await worker.stop()

    async def close(self) -> None:
        for worker in list(self._running):
            await self._discard(worker)


def _died(status: int) -> EvaluationError:
    if status == -signal.SIGXCPU:
        return EvaluationError("stopped at the CPU time limit: the worker was killed", "time")
    log.warning("a JSONata worker died (exit status %s): answered as the memory limit", status)
    return EvaluationError(
        f"stopped at the memory limit ({WORKER_MEMORY_BYTES // 2**20} MiB): the worker ran out "
        "of memory (or crashed) and was replaced",
        "memory",
    )


def _result(answer: dict[str, Any]) -> bool:
    if answer.get("error") == "compile":
        raise ExpressionError(answer["message"], answer["position"], answer.get("limit"))
    if answer.get("error") == "evaluation":
        raise EvaluationError(answer["message"], answer.get("limit"))
    return answer.get("result") is True


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """In the worker: compile and evaluate one request, within SANDBOX_LIMITS."""
    try:
        expression = compile_expression(request["expression"], SANDBOX_LIMITS)
        result = expression.evaluate(orjson.loads(request["document"]))
    except ExpressionError as exc:
        return {
            "error": "compile",
            "message": exc.message,
            "position": exc.position,
            "limit": exc.limit,
        }
    except EvaluationError as exc:
        return {"error": "evaluation", "message": str(exc), "limit": exc.limit}
    except MemoryError:  # in Python's own allocations (parsing the document)
        return {"error": "evaluation", "message": "over the memory limit", "limit": "memory"}
    return {"result": result is True}
