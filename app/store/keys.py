"""Every Redis key name, built in one place.

All keys carry the configurable prefix inside a hash tag (`{orderhook}:...`), so every Lua
script touches a single cluster slot.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"

    @property
    def ingest_stream(self) -> str:
        """The stream of accepted events, in the order they were accepted."""
        return f"{self.tag}:ingest"

    def seen(self, event_id: str) -> str:
        """Marks an event id as seen for the dedupe window; its value is the stream entry id."""
        return f"{self.tag}:seen:{event_id}"

    ROUTER_GROUP = "router"

    @property
    def ready_probe(self) -> str:
        """Written by the readiness check: does Redis take a write now (not out of memory)?"""
        return f"{self.tag}:ready"

    @property
    def stats(self) -> str:
        """Counters, kept in Redis so they are true across restarts and processes."""
        return f"{self.tag}:stats"

    def ingest_minute(self, minute: int) -> str:
        """Events accepted in one minute (Unix minutes), kept two hours."""
        return f"{self.tag}:m:{minute}"

    def event(self, event_id: str) -> str:
        """An event as routed, kept for the retention (the delivery log)."""
        return f"{self.tag}:ev:{event_id}"

    def event_log(self, event_id: str) -> str:
        """A list of an event's delivery attempts, newest first, kept for the retention."""
        return f"{self.tag}:log:{event_id}"

    def order(self, order_id: str) -> str:
        """A set of an order's event ids, kept for the retention."""
        return f"{self.tag}:order:{order_id}"

    @property
    def recent_attempts(self) -> str:
        """A list of the latest delivery attempts of every subscription (the dashboard's)."""
        return f"{self.tag}:attempts"

    def pending_age(self, sub: str) -> str:
        """A sorted set of a subscription's undelivered deliveries by creation time (ms)."""
        return f"{self.tag}:s:{sub}:age"

    def latencies(self, sub: str) -> str:
        """A list of "<ms>:<latency ms>" of the latest deliveries, newest first (replayed
        dead letters left out)."""
        return f"{self.tag}:s:{sub}:lat"

    def latency_histogram(self, sub: str) -> str:
        """A hash: cumulative counts of delivery latencies per bucket (app/store/latency.py)."""
        return f"{self.tag}:s:{sub}:lath"

    def vtex_rate(self, account: str, minute: int) -> str:
        """Get Order requests to one account in one minute, counted across processes."""
        return f"{self.tag}:vtex:rate:{account}:{minute}"

    def vtex_hold(self, account: str) -> str:
        """Set while VTEX asked (429 + Retry-After) to leave an account alone."""
        return f"{self.tag}:vtex:hold:{account}"

    def session(self, digest: str) -> str:
        """A dashboard session by the SHA-256 (hex) of its id: the browser's cookie holds the id,
        Redis only its digest. JSON `{"role", "proof"}`, expiring with the session."""
        return f"{self.tag}:session:{digest}"

    def sign_in_failures(self, client: str) -> str:
        """Failed sign-ins from one client address (its IP) in the current throttle window,
        which starts with the first and ends with this key's expiry."""
        return f"{self.tag}:signin:{client}"

    @property
    def sign_in_failures_total(self) -> str:
        """Failed sign-ins from every address together, in its own window."""
        return f"{self.tag}:signin"

    def delivery(self, delivery_id: str) -> str:
        """A hash: one event on its way to one subscription (Lua scripts build it the same way)."""
        return f"{self.tag}:d:{delivery_id}"

    def ready(self, sub: str) -> str:
        """A sorted set of the subscription's deliveries waiting, scored by due time (ms)."""
        return f"{self.tag}:s:{sub}:ready"

    def inflight(self, sub: str) -> str:
        """A sorted set of deliveries being attempted, scored by lease expiry (ms)."""
        return f"{self.tag}:s:{sub}:inflight"

    def dlq(self, sub: str) -> str:
        """A sorted set of dead-lettered deliveries, scored by when they died (ms)."""
        return f"{self.tag}:s:{sub}:dlq"

    def fired(self, sub: str, order: str) -> str:
        """Single fire: the id of the event with which an order (app/events.py's order_key)
        first matched the subscription's filter; its later matches make no delivery. Expires
        after the filter's single-fire retention, counted again from each later match."""
        return f"{self.tag}:s:{sub}:fired:{order}"

    def state(self, sub: str) -> str:
        """A hash: `state` (enabled or disabled), `reason`, `changedMs`."""
        return f"{self.tag}:s:{sub}:state"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix."""
        return self.tag.replace("{", "\\{").replace("}", "\\}") + ":*"
