"""Failed sign-ins throttled per client address and in total, counted in Redis for every process.

A request that presents a token (a bearer token, or the dashboard's sign-in form) takes one unit
of its address's allowance and of the total allowance *before* its token is checked, and gives
both back unless the answer is 401. An allowance is `[ops] sign_in_failures_per_client` (and
`sign_in_failures_total`) for `WINDOW_S` from the first check of the window; past it, requests
that present a token are answered 429 with Retry-After until the window ends. Taking before
checking means requests sent in parallel cannot all be checked while the count is still low.

The address is the connection's peer, or the client a trusted proxy names (uvicorn's
`FORWARDED_ALLOW_IPS`); the total bounds guessing however many addresses it comes from, at the
price that its flood locks token sign-ins (not open dashboard sessions, not hooks) for a window.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.store.client import Store

WINDOW_S = 600


@dataclass(frozen=True)
class Throttled:
    """A refusal: answer 429 with this message and Retry-After."""

    retry_after_s: int
    message: str


class Throttle:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def _keys(self, client: str) -> list[str]:
        keys = self.store.keys
        return [keys.sign_in_failures(client), keys.sign_in_failures_total]

    async def take(self, client: str) -> Throttled | None:
        """One unit of `client`'s and of the total allowance, or why not (nothing taken then)."""
        keys = self._keys(client)

        async def run() -> list[int]:
            async with self.store.client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.set(key, 0, ex=WINDOW_S, nx=True)
                    pipe.incr(key)
                    pipe.ttl(key)
                replies = await pipe.execute()
            del replies[::3]  # the SETs' answers; the INCRs' and TTLs' remain
            return [int(reply) for reply in replies]

        mine, mine_ttl, total, total_ttl = await self.store.guard(run)
        refused = None
        if mine > self.settings.sign_in_failures_per_client:
            wait = max(1, mine_ttl)
            refused = Throttled(
                wait, f"too many failed sign-ins from this address: retry in {wait} s"
            )
        elif total > self.settings.sign_in_failures_total:
            wait = max(1, total_ttl)
            refused = Throttled(
                wait, f"too many failed sign-ins, sign-in paused: retry in {wait} s"
            )
        if refused is not None:
            await self.give_back(client)
        return refused

    async def give_back(self, client: str) -> None:
        """The token was good (or never checked): its unit is not a failure."""
        keys = self._keys(client)

        async def run() -> None:
            async with self.store.client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.decr(key)
                    pipe.ttl(key)
                replies = await pipe.execute()
            # The window ended in between: DECR made a new key, without expiry. Give it one.
            for key, ttl in zip(keys, replies[1::2], strict=True):
                if ttl == -1:
                    await self.store.client.expire(key, WINDOW_S)

        await self.store.guard(run)
