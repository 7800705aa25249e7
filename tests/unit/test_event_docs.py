"""docs/events.md documents every event type with the fields of its model, word for word.

Each type's table sits between ``<!-- event: TYPE -->`` and ``<!-- /event -->`` and is made from
the model's fields and descriptions (pyflue/events.py). After changing a model, rewrite the
tables with ``.venv/bin/python -m tests.unit.test_event_docs --write``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pyflue.events import DATA_CLASSES, EventType

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
BLOCK = re.compile(r"<!-- event: (\w+) -->\n(.*?)<!-- /event -->\n", re.S)


def table(kind: EventType) -> str:
    model = DATA_CLASSES[kind]
    rows = ["| Key | Value |", "| --- | --- |"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {field.description or ''} |")
    return "\n".join(rows) + "\n"


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: f"<!-- event: {m[1]} -->\n{table(EventType(m[1]))}"
                               "<!-- /event -->\n", text)


def test_every_event_type_has_a_table_in_the_docs() -> None:
    documented = [m[1] for m in BLOCK.finditer(DOC.read_text())]
    assert sorted(documented) == sorted(t.value for t in EventType)


def test_the_docs_tables_match_the_event_models() -> None:
    text = DOC.read_text()
    assert regenerate(text) == text, (
        "docs/events.md is out of date with pyflue/events.py: run "
        "`.venv/bin/python -m tests.unit.test_event_docs --write`")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    DOC.write_text(regenerate(DOC.read_text()))
