from __future__ import annotations

from pathlib import Path

from proto.schema import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_docs_events_md_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/events.md is stale: run `python -m proto.schema > docs/events.md`"
    )
