"""The data model is one thing (app/store/schema.py): no Lua script spells a key or a field, the
prelude gives the scripts what Python uses, and every key in Redis belongs to a family of the
schema (the `keys` fixture checks the keys each test leaves behind)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from app.store import schema
from app.store.schema import Keys, families, family_pattern, lua_prelude, lua_string
from app.store.scripts import shared_rules

APP = Path(__file__).resolve().parent.parent / "app"
LUA_FILES = sorted(APP.rglob("*.lua"))
# Words a Redis command takes besides keys, fields and values (spelt as Redis spells them).
OPTIONS = {"NX", "XX", "EX", "PX", "LIMIT", "WITHSCORES", "MAXLEN", "-inf", "+inf", "*", "("}
LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
VALUES = {m.value for enum in (schema.Enablement, schema.Breaker, schema.Outcome) for m in enum}


def _code(path: Path) -> str:
    """The file without its comments (a `--` outside a string starts one)."""
    lines = []
    for line in path.read_text().splitlines():
        quote, cut = "", len(line)
        for i, char in enumerate(line):
            if quote:
                quote = "" if char == quote and line[i - 1] != "\\" else quote
            elif char in "'\"":
                quote = char
            elif line.startswith("--", i):
                cut = i
                break
        lines.append(line[:cut])
    return "\n".join(lines)


def _calls(code: str) -> list[str]:
    """The argument lists of every redis.call in `code` (parentheses in strings skipped)."""
    found = []
    for start in (m.end() for m in re.finditer(r"redis\.call\(", code)):
        depth, end, quote = 1, start, ""
        while depth:
            char = code[end]
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            else:
                depth += {"(": 1, ")": -1}.get(char, 0)
            end += 1
        found.append(code[start : end - 1])
    return found


def test_the_lua_files_are_found() -> None:
    names = {p.name for p in LUA_FILES}
    assert {"route.lua", "settle.lua", "claim.lua", "order.lua", "admission.lua"} <= names


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_no_lua_file_spells_a_key_or_a_field(path: Path) -> None:
    """In every redis.call, each string literal with a letter is the command or one of its
    option words: keys come from K, fields from D/S/E/H, counters from C (the prelude); the
    literals left are value punctuation (`''`, `'1'`, the `':'` of a latency sample)."""
    code = _code(path)
    for args in _calls(code):
        literals = [a or b for a, b in LITERAL.findall(args)]
        spelt = [t for t in literals[1:] if re.search("[A-Za-z]", t) and t not in OPTIONS]
        assert not spelt, f"{path.name}: redis.call({args}) spells {spelt}"
    fragments = [t for a, b in LITERAL.findall(code) if _key_like(t := a or b)]
    assert not fragments, f"{path.name} builds a key by hand: {fragments}"


def _key_like(text: str) -> bool:
    """A piece of a key name (`:s:`, `:stats`): a colon and a letter, and no space (a message
    such as 'not routed: ' has one)."""
    shaped = ":" in text and " " not in text and "%" not in text  # not a format string
    return shaped and re.search("[A-Za-z]", text) is not None


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_no_lua_file_spells_a_stored_value(path: Path) -> None:
    """States, breaker positions and outcomes come from ENABLEMENT, BREAKER and OUTCOME."""
    literals = {a or b for a, b in LITERAL.findall(_code(path))}
    assert not literals & VALUES, f"{path.name} spells {sorted(literals & VALUES)}"


def test_every_script_compiles_with_the_prelude(rdb: redis.Redis) -> None:
    """Each script as registered (prelude + shared rules + its file) loads in Redis: a name it
    uses that Lua cannot resolve is a compile error only if it is a syntax error, so the
    strict tables check the rest at run time (test_a_misspelt_name_fails_the_script)."""
    prelude = lua_prelude(Keys("t")) + shared_rules()
    for path in LUA_FILES:
        rdb.script_load(prelude + path.read_text())


def test_a_misspelt_name_fails_the_script_instead_of_writing_elsewhere(rdb: redis.Redis) -> None:
    prelude = lua_prelude(Keys("t"))
    for misspelt in ("D.atempts", "S.braker", "K.redy('s')", "C.deliverd", "BREAKER.opne"):
        with pytest.raises(redis.ResponseError, match="orderhook schema: . has no|has no"):
            rdb.eval(prelude + f"return {misspelt}", 0)


def test_the_prelude_builds_the_keys_python_builds(rdb: redis.Redis) -> None:
    """K in Lua and Keys in Python are one definition: every family, with awkward arguments."""
    keys = Keys("pre:fix-1")
    prelude = lua_prelude(keys)
    args = {"sub": "s-1", "order": "acc:o|1", "event_id": "e:1", "delivery_id": "d.1"}
    for name, parts in families().items():
        params = [p for i, p in enumerate(parts) if i % 2 == 1 and p != "TAG"]
        values = [args.get(p, f"{p}-x") for p in params]
        member = getattr(Keys, name)
        python = getattr(keys, name) if isinstance(member, property) else member(keys, *values)
        call = f"K.{name}" + (f"({', '.join(lua_string(v) for v in values)})" if params else "")
        assert rdb.eval(prelude + f"return {call}", 0).decode() == python, name
        assert re.fullmatch(family_pattern(parts), python), name


def test_lua_strings_survive_any_bytes(rdb: redis.Redis) -> None:
    text = "a'b\"c\\d\n\x00é{}"
    assert rdb.eval(f"return {lua_string(text)}", 0) == text.encode()


def test_stored_values_python_uses_are_the_prelude_s(rdb: redis.Redis) -> None:
    prelude = lua_prelude(Keys("t"))
    for table, enum in schema.LUA_TABLES.items():
        for member in enum:
            name = member.value.replace("-", "_")
            assert rdb.eval(prelude + f"return {table}.{name}", 0).decode() == member.value


def test_an_unknown_key_family_is_reported() -> None:
    """The check the `keys` fixture runs after each test."""
    tag = Keys("p").tag
    known = [f"{tag}:s:sub:ready", f"{tag}:d:x", f"{tag}:s:a:o:acc:o1", f"{tag}:schema"]
    assert [k for k in known if not schema.known_key(k)] == []
    assert not schema.known_key(f"{tag}:s:sub:mystery")
    assert not schema.known_key(f"{tag}:tmp:1")
