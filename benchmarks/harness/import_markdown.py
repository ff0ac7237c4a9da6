"""One-off: the hand-kept BENCHMARKS.md (kept as ``benchmarks/results/BENCHMARKS.legacy.md``) converted
into result records, so that the generated file keeps its history.

    python benchmarks/harness/import_markdown.py [--dry-run]

Every row of a table whose first column is ``date`` becomes one record (its cells as the row dict, the
date, command and machine columns as the record's); a table without a date column (a summary) becomes
one record holding its rows, dated by the section's nearest dated row. Every prose paragraph is kept
as a note of the table it precedes (of the section's last table when it follows it); the paragraphs
before the first section are notes of the ``general`` question. Each old section maps to a question by
its title (``benchmarks/questions.yaml``); the title becomes the table's subtitle.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.questions import question_for  # noqa: E402
from harness.results import RESULTS, make, save  # noqa: E402

LEGACY = RESULTS / "BENCHMARKS.legacy.md"
PREAMBLE = "About these figures (the hand-kept file's preamble)"
_CELL = re.compile(r"(?<!\\)\|")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    @property
    def dated(self) -> bool:
        return bool(self.header) and self.header[0] == "date"


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)  # before the first table, or in a section without one


def split_row(line: str) -> list[str]:
    """A markdown table row's cells, ``\\|`` unescaped."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip().replace("\\|", "|") for c in _CELL.split(inner)]


def blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Consecutive lines of one kind: ``heading``, ``table`` or ``prose`` (blank lines separate)."""
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        kind = "blank" if not line.strip() else "heading" if line.startswith("#") else "table" if line.startswith("|") else "prose"
        if kind == "blank":
            out.append(("blank", []))
        elif out and out[-1][0] == kind and kind != "heading":
            out[-1][1].append(line)
        else:
            out.append((kind, [line]))
    return [(k, ls) for k, ls in out if k != "blank"]


def parse(text: str) -> tuple[list[str], list[Section]]:
    """The preamble's paragraphs and the ``## `` sections, each with its tables and their notes."""
    preamble: list[str] = []
    sections: list[Section] = []
    pending: list[str] = []
    for kind, lines in blocks(text.splitlines()):
        if kind == "heading":
            if lines[0].startswith("## "):
                _close(sections, pending)
                pending = []
                sections.append(Section(lines[0][3:].strip()))
            continue  # the "# Benchmarks" title
        if kind == "prose":
            paragraph = "\n".join(lines)
            (pending if sections else preamble).append(paragraph)
        elif kind == "table":
            header = split_row(lines[0])
            rows = [split_row(ln) for ln in lines[1:] if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", ln.strip())]
            sections[-1].tables.append(Table(header, rows, notes=pending))
            pending = []
    _close(sections, pending)
    return preamble, sections


def _close(sections: list[Section], pending: list[str]) -> None:
    """Paragraphs after a section's last table: notes of that table (or the section's, without one)."""
    if not sections or not pending:
        return
    if sections[-1].tables:
        sections[-1].tables[-1].notes.extend(pending)
    else:
        sections[-1].paragraphs.extend(pending)


def unique(header: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for h in header:
        seen[h] = seen.get(h, 0) + 1
        out.append(h if seen[h] == 1 else f"{h} ({seen[h]})")
    return out


def section_date(section: Section, index: int) -> str:
    """A summary table's date: the nearest dated row before it in the section, else after, else a date in its prose."""
    before = [t.rows[-1][0] for t in section.tables[:index] if t.dated and t.rows]
    after = [t.rows[0][0] for t in section.tables[index + 1:] if t.dated and t.rows]
    if before or after:
        return (before or after)[-1 if before else 0]
    for note in section.tables[index].notes + section.paragraphs:
        m = _DATE.search(note)
        if m:
            return m.group(0)
    for t in section.tables:
        for row in t.rows:
            m = _DATE.search(" ".join(row))
            if m:
                return m.group(0)
    return "2026-11-26"


def records(text: str) -> list[dict]:
    """Every record the legacy file gives, in its order."""
    preamble, sections = parse(text)
    out = [make("legacy", "general", PREAMBLE, notes=preamble, date="2026-11-25", machine="", command="",
                params={"legacy": LEGACY.name, "dated_rows": False})]
    for section in sections:
        question = question_for(section.title)
        for i, table in enumerate(section.tables):
            header = unique(table.header)
            params = {"legacy": LEGACY.name, "table_order": i, "dated_rows": table.dated}
            name = "" if i == 0 else f"table {i + 1}"
            notes = section.paragraphs + table.notes if i == 0 else table.notes
            if table.dated:
                for j, cells in enumerate(table.rows):
                    row = dict(zip(header, cells))
                    out.append(make("legacy", question, section.title, table=name, rows=[row], notes=notes if j == 0 else [],
                                    date=row["date"], machine=row.get("machine", ""), command=row.get("command", ""), params=params))
            else:
                out.append(make("legacy", question, section.title, table=name, rows=[dict(zip(header, c)) for c in table.rows],
                                notes=notes, date=section_date(section, i), machine="", command="", params=params))
        if not section.tables:
            out.append(make("legacy", question, section.title, notes=section.paragraphs, date="2026-11-26", machine="", command="",
                            params={"legacy": LEGACY.name}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="count only; write nothing")
    args = parser.parse_args(argv)
    found = records(LEGACY.read_text())
    preamble, sections = parse(LEGACY.read_text())
    n_rows = sum(len(t.rows) for s in sections for t in s.tables)
    n_par = len(preamble) + sum(len(s.paragraphs) + sum(len(t.notes) for t in s.tables) for s in sections)
    print(f"{len(sections)} sections, {sum(len(s.tables) for s in sections)} tables, {n_rows} rows, {n_par} paragraphs -> {len(found)} records")
    if not args.dry_run:
        for record in found:
            save(record, regenerate=False)
        from harness.report import write

        write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
