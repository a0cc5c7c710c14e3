"""Reads that share one round trip: each `Read` is the commands it queues on a pipeline and a
pure function that makes their replies a value; `gather`, `both` and `record` combine reads
into one, so a page reads all it shows in one pipeline (Queries.read runs it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.asyncio.client import Pipeline

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")


@dataclass(frozen=True)
class Read(Generic[T_co]):
    """`queue` puts exactly `size` commands on a pipeline; `parse` makes their replies, in
    order, the value read (no I/O)."""

    queue: Callable[[Pipeline], object]
    size: int
    parse: Callable[[Sequence[Any]], T_co]

    def map(self, make: Callable[[T_co], U]) -> Read[U]:
        """The same commands, their value made into another."""
        parse = self.parse
        return Read(self.queue, self.size, lambda replies: make(parse(replies)))


def single(queue: Callable[[Pipeline], object], parse: Callable[[Any], T]) -> Read[T]:
    """A read of one command."""
    return Read(queue, 1, lambda replies: parse(replies[0]))


def constant(value: T) -> Read[T]:
    """A read of no command: `value` (what a page shows when it needs nothing more)."""
    return Read(lambda pipe: None, 0, lambda replies: value)


def gather(reads: Sequence[Read[T]]) -> Read[list[T]]:
    """The values of `reads`, in order, read together."""
    reads = list(reads)

    def queue(pipe: Pipeline) -> None:
        for read in reads:
            read.queue(pipe)

    def parse(replies: Sequence[Any]) -> list[T]:
        values, at = [], 0
        for read in reads:
            values.append(read.parse(replies[at : at + read.size]))
            at += read.size
        return values

    return Read(queue, sum(read.size for read in reads), parse)


def both(first: Read[T], second: Read[U]) -> Read[tuple[T, U]]:
    """The values of two reads, read together."""
    return Read(
        lambda pipe: (first.queue(pipe), second.queue(pipe)),
        first.size + second.size,
        lambda replies: (first.parse(replies[: first.size]), second.parse(replies[first.size :])),
    )


def record(make: Callable[..., T], *parts: Read[Any]) -> Read[T]:
    """`make(*values of parts)`, the parts read together (e.g. a dataclass of what a page
    shows)."""
    return gather(parts).map(lambda values: make(*values))
