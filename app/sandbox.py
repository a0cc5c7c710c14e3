"""JSONata from callers the gateway does not trust, and the config's filters and transforms,
run in worker processes it can kill.

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

The config's FromOrders filters and push transforms go to pools of their own (ConfigExpressions:
one for the router, one for delivery), whose workers compile them once when they start.

The protocol, one JSON object per line each way: {"expression", "document" (JSON text)} ->
{"result": bool}, or {"error": "compile" | "evaluation", "message", "limit", "position"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from app.filters import (
    MAX_MESSAGE_CHARS,
    EvaluationError,
    Expression,
    ExpressionError,
    Limits,
    check_length,
    compile_expression,
    order_document,
)

log = logging.getLogger("orderhook.sandbox")

WORKERS = 2
WORKER_MEMORY_BYTES = 256 * 1024 * 1024  # address space: ~25 MiB of it is Python and jsonatapy
SANDBOX_LIMITS = Limits(timeout_ms=1000)
# Start, compile (with the error-position search), parse the document, evaluate: past this
# the worker is killed. Above SANDBOX_LIMITS.timeout_ms, which answers more precisely.
DEADLINE_S = 3.0
QUEUE_WAIT_S = 1.0
PIPE_BYTES = 1024 * 1024  # Linux's default maximum (fs.pipe-max-size) for an unprivileged user
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
ANSWER_MAX_BYTES = 64 * 1024  # one answer line; messages are cut to MAX_MESSAGE_CHARS
# The config's filters and transforms: one worker for the router (it sends one batch at a time),
# one for transforms. Their answers carry transforms' results: each within MAX_RESULT_BYTES.
CONFIG_WORKERS = 1
MAX_RESULT_BYTES = 4 * 1024 * 1024
CONFIG_ANSWER_MAX_BYTES = 64 * 1024 * 1024
FILTER, TRANSFORM = "filter:", "transform:"  # the prefixes of expression names

Job = tuple[Sequence[str], bytes]  # expression names, an event (JSON)
Verdict = Any  # True/False (a filter), a value (a transform) or an EvaluationError


class SandboxBusy(Exception):
    """Every worker stayed busy for QUEUE_WAIT_S."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, answer_max_bytes: int) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.sandbox_worker",
            str(WORKER_MEMORY_BYTES),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # a Rust abort's message: the answer says it
            limit=answer_max_bytes,
        )
        for stream in (process.stdin, process.stdout):  # a batch in few writes, not 64 KiB each
            with contextlib.suppress(OSError, AttributeError, ValueError):
                pipe = stream.transport.get_extra_info("pipe")  # type: ignore[union-attr]
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
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
    """A pool of at most `workers` worker processes. A worker started by the pool is first sent
    `preamble` (if any: config expressions to compile) before its first request."""

    def __init__(
        self,
        workers: int = WORKERS,
        preamble: bytes | None = None,
        answer_max_bytes: int = ANSWER_MAX_BYTES,
    ) -> None:
        self._answer_max_bytes = answer_max_bytes
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()
        self._preamble = preamble

    async def test(self, expression: str, document: str) -> bool:
        """True when `expression` yields `true` on `document` (JSON text); ExpressionError,
        EvaluationError (`limit` set when a limit stopped it) or SandboxBusy otherwise."""
        check_length(expression)
        request = orjson.dumps({"expression": expression, "document": document}) + b"\n"
        return _result(await self.ask(request))

    async def ask(self, request: bytes, deadline_s: float = DEADLINE_S) -> dict[str, Any]:
        """A worker's answer to one request line; SandboxBusy if no worker was free within
        QUEUE_WAIT_S, EvaluationError (time or memory) if the worker was killed or died."""
        try:
            await asyncio.wait_for(self._slots.acquire(), QUEUE_WAIT_S)
        except TimeoutError:
            raise SandboxBusy(
                f"every JSONata worker stayed busy for {QUEUE_WAIT_S:g} s; try again"
            ) from None
        try:
            return await self._ask(request, deadline_s)
        finally:
            self._slots.release()

    async def _ask(self, request: bytes, deadline_s: float) -> dict[str, Any]:
        worker = self._idle.pop() if self._idle else await self._ready(await self._start())
        try:
            async with asyncio.timeout(deadline_s):
                reply = await worker.ask(request)
        except TimeoutError:
            await self._discard(worker)
            raise EvaluationError(
                f"stopped at the time limit ({deadline_s:g} s): the worker was killed", "time"
            ) from None
        except BaseException:  # cancelled: a worker whose answer was not read is of no use
            await self._discard(worker)
            raise
        if reply is None:
            raise _died(await self._discard(worker))
        self._idle.append(worker)
        return reply

    async def _ready(self, worker: _Worker) -> _Worker:
        """A fresh worker, once it has compiled the preamble's expressions. One that cannot is
        no answer about any request: SandboxBusy (try again later)."""
        if self._preamble is None:
            return worker
        try:
            async with asyncio.timeout(DEADLINE_S):
                reply = await worker.ask(self._preamble)
        except TimeoutError:
            reply = None
        except BaseException:
            await self._discard(worker)
            raise
        if reply is None or "error" in reply:
            status = await self._discard(worker)
            raise SandboxBusy(f"a JSONata worker could not start (exit status {status})")
        return worker

    async def _start(self) -> _Worker:
        worker = await _Worker.start(self._answer_max_bytes)
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


def expression_sources(expressions: Mapping[str, Expression]) -> dict[str, tuple[str, Limits]]:
    """What a pool of these expressions holds: each one's source and limits, by name (a pool
    of equal sources answers alike, and need not be made again)."""
    return {name: (e.source, e.limits) for name, e in expressions.items()}


class ConfigExpressions:
    """The config's FromOrders filters and transforms, evaluated in a pool of its own (apart
    from the test endpoint's, so hostile test requests cannot starve routing or delivery).

    Each worker compiles every expression once, when it starts (with the config's Limits); a
    request then names the expressions to run on each event: `{"run": [[names, event], ...]}`,
    answered `{"results": [[verdict, ...], ...]}`. A filter's verdict is `{"match": bool}`, a
    transform's `{"value": ...}`, a failure `{"error", "limit"}`. A worker that dies or is
    killed during a batch takes nobody else's answer with it: the batch is evaluated again one
    expression at a time, on fresh workers, and only the one that killed it fails.
    """

    def __init__(self, expressions: dict[str, Expression], workers: int = CONFIG_WORKERS) -> None:
        self.names = frozenset(expressions)
        self._per_evaluation_s = max(
            (e.limits.timeout_ms / 1000 for e in expressions.values()), default=0.0
        )
        load = {name: _spec(e) for name, e in expressions.items()}
        preamble = orjson.dumps({"load": load}) + b"\n"
        self._pool = Sandbox(workers, preamble, CONFIG_ANSWER_MAX_BYTES)
        self._busy = 0  # evaluations under way
        self._idle = asyncio.Event()
        self._idle.set()

    async def evaluate(self, jobs: Sequence[Job]) -> list[list[Verdict]]:
        """Per job (expression names, the event as JSON), per name: True/False for a filter,
        the value for a transform, or the EvaluationError. SandboxBusy: try again later."""
        self._busy += 1
        self._idle.clear()
        try:
            return await self._evaluate(jobs)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _evaluate(self, jobs: Sequence[Job]) -> list[list[Verdict]]:
        try:
            return await self._run(jobs)
        except EvaluationError as exc:  # the worker died or was killed
            if sum(len(names) for names, _ in jobs) == 1:
                return [[exc]]
        return [[await self._alone(name, event) for name in names] for names, event in jobs]

    async def retire(self) -> None:
        """Close the pool once the evaluations under way are done (the subscriptions changed:
        a new pool has the new expressions)."""
        await self._idle.wait()
        await self.close()

    async def _alone(self, name: str, event: bytes) -> Verdict:
        try:
            [[verdict]] = await self._run([([name], event)])
        except EvaluationError as exc:
            log.warning("expression %s killed its worker: %s", name, exc)
            return exc
        return verdict

    async def _run(self, jobs: Sequence[Job]) -> list[list[Verdict]]:
        count = sum(len(names) for names, _ in jobs)
        budget_s = DEADLINE_S + 2 * count * self._per_evaluation_s
        request = {
            "run": [[list(names), orjson.Fragment(event)] for names, event in jobs],
            "cpu_s": math.ceil(budget_s),
        }
        reply = await self._pool.ask(orjson.dumps(request) + b"\n", budget_s)
        return [[_verdict(v) for v in row] for row in reply["results"]]

    async def close(self) -> None:
        await self._pool.close()


def _spec(expression: Expression) -> dict[str, Any]:
    return {"source": expression.source, "limits": dataclasses.asdict(expression.limits)}


def _verdict(answer: dict[str, Any]) -> Verdict:
    if "error" in answer:
        return EvaluationError(answer["error"], answer.get("limit"))
    return answer["match"] if "match" in answer else answer.get("value")


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
    """In the worker: the answer to one request line."""
    if "load" in request:
        return _load(request["load"])
    if "run" in request:
        return {"results": [_run(names, event) for names, event in request["run"]]}
    return _test(request)


_LOADED: dict[str, Expression] = {}  # in a config pool's worker: its expressions, by name


def _load(specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    try:
        for name, spec in specs.items():
            _LOADED[name] = compile_expression(spec["source"], Limits(**spec["limits"]))
    except ExpressionError as exc:  # the gateway compiled them already: not expected
        return {"error": "compile", "message": exc.message}
    return {"loaded": len(_LOADED)}


def _run(names: list[str], event: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        document = order_document(event)
    except (KeyError, TypeError) as exc:  # not an event the gateway wrote
        return [{"error": f"not an order event: {exc!r}"[:MAX_MESSAGE_CHARS]} for _ in names]
    return [_evaluate(name, document) for name in names]


def _evaluate(name: str, document: dict[str, Any]) -> dict[str, Any]:
    try:
        value = _LOADED[name].evaluate(document)
        if name.startswith(FILTER):
            return {"match": value is True}
        if len(encoded := orjson.dumps(value)) > MAX_RESULT_BYTES:
            return {"error": f"the result is over {MAX_RESULT_BYTES} bytes", "limit": "memory"}
        return {"value": orjson.Fragment(encoded)}
    except EvaluationError as exc:
        return {"error": str(exc), "limit": exc.limit}
    except (MemoryError, orjson.JSONEncodeError) as exc:
        return {"error": f"stopped at the memory limit: {type(exc).__name__}", "limit": "memory"}


def _test(request: dict[str, Any]) -> dict[str, Any]:
    """Compile and evaluate one expression sent by the test endpoint, within SANDBOX_LIMITS."""
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
