"""README.md's examples work as written: every TOML block (and every file in examples/) loads
through the real config loader; every `FromWorkflow` / `FromOrders` filter it shows matches the
README's own notification in some VTEX state (with the order VTEX's Get Order would give, where
its source has `enrich = true`, and only there); every `orderhook` command line in its shell
blocks is one the CLI takes."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.config import Settings, load_settings, source_for
from app.dev.fake_vtex import SAMPLE_ORDER
from app.errors import ConfigError
from app.events import Notification, normalize, parse_body, utc_now_iso
from app.filters import FromOrders, FromWorkflow, order_document
from app.signing import new_secret
from app.vtex.hooks import DEFAULT_STATUSES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT.joinpath("README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
# A subscription around a block that holds only some of a subscription's keys (the text says so)
RUNS_ORDERHOOK = re.compile(r"(^|[\s;&|(])(\S*/)?orderhook(\s|$)")
SUBSCRIPTION = '[[subscriptions]]\nid = "readme"\nurl = "https://erp.example.com/vtex"\n'


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block in that language."""
    return [
        (README.count("\n", 0, found.start()) + 1, found.group(2))
        for found in FENCE.finditer(README)
        if found.group(1) == language
    ]


def env_for(text: str) -> dict[str, str]:
    """A value for every environment variable the TOML names (`*_env` keys and `{env = ...}`
    values, at any depth)."""
    env: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_env") and isinstance(value, str):
                    env[value] = new_secret() if key == "secret_env" else f"readme-{value}"
                if key == "env" and isinstance(value, str):
                    env[value] = f"readme-{value}"
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(tomllib.loads(text))
    return env


def load(text: str, tmp_path: Path) -> Settings:
    """The settings a file with `text` gives; a block without a table that is not a config
    by itself (the keys of a subscription, as the text around it says) is loaded inside one."""
    path = tmp_path / "readme.toml"
    path.write_text(text, encoding="utf-8")
    try:
        return load_settings(path, env_for(text))
    except ConfigError:
        if re.search(r"^\s*\[", text, re.MULTILINE):
            raise
    path.write_text(SUBSCRIPTION + f'secret = "{new_secret()}"\n' + text, encoding="utf-8")
    return load_settings(path, env_for(text))


TOML_BLOCKS = blocks("toml")
EXAMPLES = sorted(ROOT.joinpath("examples").glob("*.toml"))


def test_the_readme_has_toml_examples_and_a_filter_that_needs_enrich() -> None:
    assert len(TOML_BLOCKS) >= 4
    assert any("enrich = true" in text and "FromOrders" in text for _, text in TOML_BLOCKS)


@pytest.mark.parametrize("line, text", TOML_BLOCKS, ids=[f"line {n}" for n, _ in TOML_BLOCKS])
def test_each_readme_toml_block_loads(line: int, text: str, tmp_path: Path) -> None:
    load(text, tmp_path)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_config_loads(path: Path) -> None:
    load_settings(path, env_for(path.read_text(encoding="utf-8")))


def readme_notification() -> dict[str, Any]:
    """The notification the README posts with curl."""
    for _, text in blocks("sh"):
        words = shlex.split(text.replace("\\\n", " "), comments=True)
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "-d" and '"OrderId"' in value:
                doc = json.loads(value)
                assert isinstance(doc, dict)
                return doc
    raise AssertionError("the README posts no notification")


def events(state: str, enriched: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The event the gateway keeps for the README's notification in `state`, and the order
    document filters see: with `enriched`, the order Get Order answers after that change."""
    notification = parse_body(json.dumps({**readme_notification(), "State": state}).encode())
    assert isinstance(notification, Notification)
    event = normalize(notification, utc_now_iso())
    if enriched:
        event["order"] = {**SAMPLE_ORDER, "orderId": event["orderId"], "status": state}
    return event, order_document(event)


def readme_filters(tmp_path: Path) -> list[tuple[str, bool, FromWorkflow | FromOrders]]:
    """(subscription id, whether its account's source enriches, filter) of every README
    subscription with a VTEX filter."""
    found = []
    for _, text in TOML_BLOCKS:
        settings = load(text, tmp_path)
        source = source_for(settings.sources, readme_notification()["Origin"]["Account"])
        for sub in settings.subscriptions:
            if isinstance(sub.filter, FromWorkflow | FromOrders):
                found.append((sub.id, source is not None and source.enrich, sub.filter))
    return found


def test_every_readme_filter_matches_its_notification_in_some_state(tmp_path: Path) -> None:
    filters = readme_filters(tmp_path)
    assert {type(f) for _, _, f in filters} == {FromWorkflow, FromOrders}
    for sub_id, enriched, flt in filters:
        matched = [s for s in DEFAULT_STATUSES if flt.matches(*events(s, enriched))]
        assert matched, f"{sub_id}: {flt} matches no state of the README's notification"
        assert len(matched) < len(DEFAULT_STATUSES), f"{sub_id} matches every state"


def test_readme_filters_that_read_the_whole_order_have_an_enriching_source(
    tmp_path: Path,
) -> None:
    """Those that match nothing on the hook's own fields are the ones the README gives a source
    with `enrich = true`: `value > 10000` and the like never match without it."""
    needs_enrich = []
    for sub_id, enriched, flt in readme_filters(tmp_path):
        if not any(flt.matches(*events(state, False)) for state in DEFAULT_STATUSES):
            assert enriched, f"{sub_id} needs `enrich = true` on its source"
            needs_enrich.append(sub_id)
    assert needs_enrich  # the README shows at least one, saying so


def orderhook_command_lines() -> list[list[str]]:
    """The arguments of every `orderhook` (or `.venv/bin/orderhook`) in the README's shell
    blocks; `[optional]` brackets dropped and `<placeholders>` filled in."""
    commands = []
    for _, text in blocks("sh"):
        text = re.sub(r"<[^<>\n]+>", "PLACEHOLDER", text.replace("\\\n", " "))
        for line in text.splitlines():
            if RUNS_ORDERHOOK.search(line):
                commands += orderhook_commands_in(line)
    return commands


def orderhook_commands_in(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars="();|&")
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = list(lexer)
    commands = []
    for at, word in enumerate(words):
        if word == "orderhook" or word.endswith("/orderhook"):
            args = []
            for arg in words[at + 1 :]:
                if arg and set(arg) <= set("();|&"):
                    break
                args.append(arg.strip("[]"))
            commands.append(args)
    return commands


def test_the_readme_orderhook_commands_are_ones_the_cli_takes() -> None:
    commands = orderhook_command_lines()
    assert ["secret", "new"] in commands and ["dev", "fake-vtex"] in commands
    parser = build_parser()
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"the README runs `orderhook {' '.join(args)}`, which the CLI refuses")
        for flag, value in zip(args, args[1:], strict=False):
            if flag == "--config" and value.startswith("examples/"):
                assert ROOT.joinpath(value).is_file(), f"the README names {value}"
