"""The Lua scripts, one `.lua` file each in this package, registered with what they share.

Every script starts with the schema's prelude (app/store/schema.py: the key builders, field
names and values, for this key prefix); the delivery scripts also get the shared rules: the
subscription state's (state.lua) and the per-order ones (order.lua).
"""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from app.events import POSITION_TICKS_DIGITS
from app.store.schema import Keys, lua_prelude


def load_script(name: str) -> str:
    return resources.files("app.store").joinpath(name).read_text(encoding="utf-8")


def shared_rules() -> str:
    """The rules the delivery scripts share: the constants of app/events.py they need, the
    subscription state's rules (state.lua), a delivery's (delivery.lua), admission (admission.lua)
    and the per-order ones (order.lua)."""
    constants = f"local POSITION_TICKS_DIGITS = {POSITION_TICKS_DIGITS}\n"
    rules = ("state.lua", "delivery.lua", "admission.lua", "order.lua")
    return constants + "".join(load_script(name) for name in rules)


def register(client: aioredis.Redis, keys: Keys, name: str, rules: bool = True) -> AsyncScript:
    """The script `name`, after the prelude (and the shared rules unless `rules` is False)."""
    source = lua_prelude(keys) + (shared_rules() if rules else "") + load_script(name)
    return client.register_script(source)
