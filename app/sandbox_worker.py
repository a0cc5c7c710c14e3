"""The sandbox's worker process (`python -m app.sandbox_worker`): see app/sandbox.py.

It caps its own address space before it imports jsonatapy (whose allocator would otherwise
reserve 1 GiB up front), asks to be killed with its parent, lowers its CPU priority below the
gateway's, then answers one request per line
on stdin, one answer per line on stdout, until stdin closes. An allocation past the cap aborts
the process: the gateway sees the pipe close and answers that the memory limit was hit.

Only the standard library is imported at the top: everything else after the limits are set.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1
# Below the gateway's CPU priority: an expression that burns a core yields it to the gateway.
NICENESS = 10
# Past the gateway's deadline, in case the gateway itself is gone: CPU seconds per request.
CPU_BACKSTOP_S = 5


def limit_memory(max_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: stdin closing still ends the loop
        pass


def limit_cpu_for_one_request(cpu_s: int) -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(used.ru_utime + used.ru_stime) + cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def main() -> int:
    limit_memory(int(sys.argv[1]))
    die_with_parent()
    os.nice(NICENESS)
    import orjson  # after the memory limit, on purpose

    from app.sandbox import answer

    for line in sys.stdin.buffer:
        request: dict[str, Any] = orjson.loads(line)
        # a batch of config expressions says how long it may take
        limit_cpu_for_one_request(max(CPU_BACKSTOP_S, int(request.get("cpu_s", 0))))
        sys.stdout.buffer.write(orjson.dumps(answer(request)) + b"\n")
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
