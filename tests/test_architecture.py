"""docs/architecture.md names every key family of the schema, and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from app.store.schema import families

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_key_family_is_in_the_architecture_note() -> None:
    rows = set(re.findall(r"^\| (\w+) \| `\{prefix\}", DOC, re.MULTILINE))
    assert rows == set(families())


def test_every_file_the_note_names_exists() -> None:
    named = set(re.findall(r"`((?:[\w/]+/)?\w+\.(?:py|lua))`", DOC))
    files = [p for folder in ("app", "tests") for p in (ROOT / folder).rglob("*.*")]
    found = {str(p.relative_to(ROOT)) for p in files}
    found |= {name.removeprefix("app/") for name in found}
    found |= {name.rsplit("/", 1)[-1] for name in found}  # a file named without its folder
    missing = sorted(named - found)
    assert named and not missing
