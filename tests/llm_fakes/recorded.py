"""Replies recorded in each API's wire format (``recorded/<api>/<name>.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent / "recorded"


def load(api: str, name: str) -> Any:
    return json.loads((RECORDED / api / f"{name}.json").read_text())


def names(api: str) -> list[str]:
    return sorted(path.stem for path in (RECORDED / api).glob("*.json"))
