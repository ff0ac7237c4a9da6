"""Result records: one JSON file per measurement under ``benchmarks/results/<question>/``, from which
BENCHMARKS.md is generated (``report.py``). A record is never overwritten: history is the folder.

A record: ``{suite, question, title, table, date, machine, command, params, figures, rows, notes}``;
``figures`` is a flat dict of named numbers (what a later script or plot reads), ``rows`` the table
rows as ``{column: cell}`` dicts (what BENCHMARKS.md shows), ``notes`` paragraphs of prose shown
above the table (how to read it). ``title`` names the table's heading, ``table`` a second table
under the same heading (empty for the first)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import date as _date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STORED = ROOT / "benchmarks" / "results"
#: Where results are stored: the repository's folder, or ``$CHUNKED_FNET_BENCH_RESULTS`` (a trial run that should leave it alone).
RESULTS = Path(os.environ.get("CHUNKED_FNET_BENCH_RESULTS", STORED))
FIELDS = ("suite", "question", "title", "table", "date", "machine", "command", "params", "figures", "rows", "notes")


def today() -> str:
    return str(_date.today())


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this process was run, for the table (relative to the repository root)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("python")
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(argv[0]) if argv else ""
    return "`python " + " ".join([shown, *argv[1:]]) + "`"


def slug(text: str, limit: int = 48) -> str:
    """A file-name part from a title: lower case, words joined by '-'."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "result"


def make(
    suite: str, question: str, title: str, *, rows: Sequence[Mapping[str, Any]] = (), figures: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None, notes: Sequence[str] = (), table: str = "", date: str | None = None,
    machine: str | None = None, command: str | None = None,
) -> dict[str, Any]:
    """A record with today's date, this machine and this command unless given."""
    from harness.questions import QUESTIONS

    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}: one of {sorted(QUESTIONS)} (benchmarks/questions.yaml)")
    if machine is None:
        from harness.machine import machine as machine_row

        machine = machine_row()
    return {
        "suite": suite, "question": question, "title": title, "table": table, "date": date or today(), "machine": machine,
        "command": command_line() if command is None else command, "params": dict(params or {}),
        "figures": {k: _number(v) for k, v in (figures or {}).items()}, "rows": [dict(r) for r in rows], "notes": list(notes),
    }


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, int) else float(value)


def path_for(record: Mapping[str, Any], root: Path = RESULTS) -> Path:
    """``<root>/<question>/<date>_<suite>_<slug>.json``, with ``-2``, ``-3`` ... when taken."""
    folder = root / record["question"]
    base = f"{record['date']}_{record['suite']}_{slug(record['title'] + (' ' + record['table'] if record.get('table') else ''))}"
    path, n = folder / f"{base}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}.json"
    return path


def save(record: Mapping[str, Any], root: Path = RESULTS, regenerate: bool = True) -> Path:
    """Store ``record`` (never over an existing file) and, by default, regenerate BENCHMARKS.md from
    every stored record (so the file and the results never disagree)."""
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"record lacks {missing}")
    path = path_for(record, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as f:  # "x": fails rather than overwrite, should two runs race
        json.dump(dict(record), f, indent=1, ensure_ascii=False, default=float)
        f.write("\n")
    if regenerate and root == STORED:  # BENCHMARKS.md shows the repository's results only
        from harness.report import write

        write()
    return path


def sequence(path: Path) -> int:
    """The counter of a stored file's name (1 for the first of its date, suite and title)."""
    m = re.search(r"-(\d+)$", path.stem)
    return int(m.group(1)) if m else 1


def load_all(root: Path = RESULTS) -> list[tuple[Path, dict[str, Any]]]:
    """Every stored record under ``root/<question>/``, oldest first (date, then name and counter)."""
    found = []
    for path in root.glob("*/*.json"):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "question" in record and "rows" in record:
            found.append((path, record))
    found.sort(key=lambda pr: (pr[1]["date"], re.sub(r"-\d+$", "", pr[0].stem), sequence(pr[0])))
    return found


def save_row(
    suite: str, title: str, columns: Sequence[str], cells: Sequence[object], *, question: str | None = None,
    figures: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None, notes: Sequence[str] = (),
    save_it: bool = True,
) -> str:
    """One table row (``columns`` and their ``cells``, as the scripts wrote BENCHMARKS.md rows) as a
    record; the question follows from the title (questions.yaml) unless given. Returns the row as markdown."""
    from harness.questions import question_for

    if len(columns) != len(cells):
        raise ValueError(f"{len(columns)} columns, {len(cells)} cells")
    row = {str(c): str(v) for c, v in zip(columns, cells)}
    record = make(
        suite, question or question_for(title), title, rows=[row], figures=figures, params=params, notes=notes,
        date=row.get("date"), machine=row.get("machine"), command=row.get("command"),
    )
    if save_it:
        path = save(record)
        print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
