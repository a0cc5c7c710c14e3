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

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this prefix."""
        return self.tag.replace("{", "\\{").replace("}", "\\}") + ":*"
