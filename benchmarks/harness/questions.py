"""The questions BENCHMARKS.md is organised by (``benchmarks/questions.yaml``: one home for their prose
and for which table titles belong to which)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

QUESTIONS_FILE = Path(__file__).resolve().parents[1] / "questions.yaml"
QUESTIONS: dict[str, dict[str, Any]] = yaml.safe_load(QUESTIONS_FILE.read_text())
FALLBACK = "other"


def question_for(title: str) -> str:
    """The question a table title belongs to (``other`` when none lists it)."""
    for key, q in QUESTIONS.items():
        if title in (q.get("titles") or []):
            return key
    return FALLBACK
