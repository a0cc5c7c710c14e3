"""Failed sign-ins throttled per client address and in total, counted in Redis for every process.

A failed sign-in is a 401 to a request that presented a token (a bearer token, or the
dashboard's sign-in form). After `[ops] sign_in_failures_per_client` of them from one address
within `WINDOW_S` of its first, or `sign_in_failures_total` from all addresses together, a
request presenting a token is answered 429 with Retry-After until that window ends, whatever
token it presents; requests without one (hooks, open dashboard sessions) are not affected.

Each failure is counted before its 401 is sent, so one client asking in turn cannot outrun
the count. Requests sent at once are all checked before their failures are counted: a burst
can pass the allowance by the connections one address may hold (`[server]
max_connections_per_client`) — the price of not capping how many good requests one address
may have in flight (a feed consumer's, say). The total bounds guessing from any number of
addresses; a flood of bad tokens can so pause token sign-ins for everyone, for a window.

The address is the connection's peer, or the client a trusted proxy names (uvicorn's
`FORWARDED_ALLOW_IPS`).
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

    async def check(self, client: str) -> Throttled | None:
        """Why a request presenting a token from `client` is refused now; None if it is not."""
        keys = self._keys(client)

        async def run() -> list[int]:
            async with self.store.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                return [int(reply or 0) for reply in await pipe.execute()]

        mine, mine_ttl, total, total_ttl = await self.store.guard(run)
        if mine >= self.settings.sign_in_failures_per_client:
            wait = max(1, mine_ttl)
            return Throttled(wait, f"too many failed sign-ins from this address: retry in {wait} s")
        if total >= self.settings.sign_in_failures_total:
            wait = max(1, total_ttl)
            return Throttled(wait, f"too many failed sign-ins, sign-in paused: retry in {wait} s")
        return None

    async def failed(self, client: str) -> None:
        """Count one failure from `client`; a window starts with the first."""
        keys = self._keys(client)

        async def run() -> None:
            async with self.store.client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.set(key, 0, ex=WINDOW_S, nx=True)
                    pipe.incr(key)
                await pipe.execute()

        await self.store.guard(run)
