"""The Lua scripts, one `.lua` file each in this package, registered with what they share.

Every script starts with the schema's prelude (app/store/schema.py: the key builders, field
names and values, for this key prefix); the delivery scripts also get the shared rules: the
subscription state's (state.lua), a delivery's, admission and the per-order ones (app/ordering:
order.lua and the position's constants).
"""

from __future__ import annotations

import functools
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from app.ordering import lua_rules as ordering_rules
from app.store.schema import Keys, lua_prelude


def load_script(name: str) -> str:
    return resources.files("app.store").joinpath(name).read_text(encoding="utf-8")


@functools.cache  # the same text for every script and every store: read once
def shared_rules() -> str:
    """The rules the delivery scripts share: the subscription state's rules (state.lua), a
    delivery's (delivery.lua), admission (admission.lua) and the per-order ones (app/ordering)."""
    rules = ("state.lua", "delivery.lua", "admission.lua")
    return "".join(load_script(name) for name in rules) + ordering_rules()


def register(client: aioredis.Redis, keys: Keys, name: str, rules: bool = True) -> AsyncScript:
    """The script `name`, after the prelude (and the shared rules unless `rules` is False)."""
    source = lua_prelude(keys) + (shared_rules() if rules else "") + load_script(name)
    return client.register_script(source)
