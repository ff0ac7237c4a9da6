"""The hand-kept BENCHMARKS.md (old style: ``## `` sections of markdown tables and prose) converted into
result records, so that the generated file keeps its history. Re-runnable: it stores only the rows and
paragraphs no stored record has yet, so it also imports sections (or rows) a branch added to a hand-kept
file later.

    python benchmarks/harness/import_markdown.py [--from SOURCE] [--section TITLE ...] [--as-legacy] [--dry-run]

SOURCE is a file or ``git:REF`` (``git:REF:PATH``; PATH defaults to BENCHMARKS.md), default the kept copy
``benchmarks/results/BENCHMARKS.legacy.md``; ``--section`` imports only those sections (exact titles);
``--as-legacy`` then makes SOURCE the kept copy (``tests/test_benchmarks_report.py`` checks that every
row, paragraph and title of the kept copy is in BENCHMARKS.md). A generated BENCHMARKS.md is refused, and
so is a section whose title no question of ``benchmarks/questions.yaml`` lists (add it there first).
E.g., merging main's hand-kept file into the harness: ``--from git:main --as-legacy``.

Every row of a table whose first column is ``date`` becomes one record (its cells as the row dict, the
date, command and machine columns as the record's); a table without a date column (a summary) becomes
one record holding its rows, dated by the section's nearest dated row. Every prose paragraph is kept
as a note of the table it precedes (of the section's last table when it follows it); the paragraphs
before the first section are notes of the ``general`` question. Each old section maps to a question by
its title (``benchmarks/questions.yaml``); the title becomes the table's subtitle. A section's tables are
told apart by their order in it (``table``: "", "table 2", ...). Already stored: a row equal to a stored
row of the same title and table (counted, so a repeated row is imported as often as the source repeats
it), a paragraph among the title's stored notes.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.questions import FALLBACK, question_for  # noqa: E402
from harness.results import RESULTS, ROOT, load_all, make, save  # noqa: E402

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


def records(text: str, source: str = LEGACY.name, only: Sequence[str] | None = None) -> list[dict]:
    """Every record the hand-kept file ``text`` gives, in its order (``only``: those sections' alone, no
    preamble); ``source`` names the file in their params."""
    preamble, sections = parse(text)
    out = [] if only is not None else [
        make("legacy", "general", PREAMBLE, notes=preamble, date="2026-11-25", machine="", command="",
             params={"legacy": source, "dated_rows": False})]
    for section in sections:
        if only is not None and section.title not in only:
            continue
        question = question_for(section.title)
        for i, table in enumerate(section.tables):
            header = unique(table.header)
            params = {"legacy": source, "table_order": i, "dated_rows": table.dated}
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
                            params={"legacy": source}))
    return out


def _row_key(row: Mapping[str, object]) -> str:
    return json.dumps(dict(row), sort_keys=True, ensure_ascii=False)


def new_records(found: Sequence[dict], stored: Sequence[dict]) -> list[dict]:
    """``found`` less what ``stored`` already has: per (question, title, table), rows beyond as many equal
    stored rows; per (question, title), paragraphs not among the stored notes. A record left with neither is
    dropped; a record's remaining paragraphs stay its notes, and notes of a dropped record move to the next
    record kept under the same title and table (else they are kept in a record of their own, without rows)."""
    rows: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    notes: dict[tuple, set[str]] = collections.defaultdict(set)
    for r in stored:
        rows[(r["question"], r["title"], r.get("table", ""))].update(_row_key(x) for x in r["rows"])
        notes[(r["question"], r["title"])].update(r.get("notes", []))
    out: list[dict] = []
    carried: dict[tuple, list[str]] = {}
    for r in found:
        key, title_key = (r["question"], r["title"], r.get("table", "")), (r["question"], r["title"])
        kept_rows = []
        for x in r["rows"]:
            if rows[key][_row_key(x)] > 0:
                rows[key][_row_key(x)] -= 1
            else:
                kept_rows.append(x)
        fresh = [n for n in r.get("notes", []) if n not in notes[title_key]]
        notes[title_key].update(fresh)
        pending = carried.pop(key, []) + fresh
        if r["rows"] and not kept_rows:  # every row stored already: its new paragraphs go with the next new row
            if pending:
                carried[key] = pending
            continue
        if not r["rows"] and not pending:
            continue
        out.append({**r, "rows": kept_rows, "notes": pending})
    for (question, title, table), pending in carried.items():
        source = next(r for r in found if (r["question"], r["title"], r.get("table", "")) == (question, title, table))
        out.append({**source, "rows": [], "notes": pending})
    return out


def read_source(spec: str | None) -> tuple[str, str]:
    """(name, text) of the hand-kept file ``spec``: a path, ``git:REF`` or ``git:REF:PATH``, default the kept copy."""
    if spec is None:
        return LEGACY.name, LEGACY.read_text()
    if spec.startswith("git:"):
        ref, _, path = spec[4:].partition(":")
        text = subprocess.run(["git", "show", f"{ref}:{path or 'BENCHMARKS.md'}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
        return spec, text
    return Path(spec).name, Path(spec).read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default=None, help="a hand-kept file, git:REF or git:REF:PATH (default: the kept copy)")
    parser.add_argument("--section", action="append", default=None, help="import only this section (exact title; repeatable)")
    parser.add_argument("--as-legacy", action="store_true", help="then keep SOURCE as results/BENCHMARKS.legacy.md")
    parser.add_argument("--dry-run", action="store_true", help="count and list only; write nothing")
    args = parser.parse_args(argv)
    name, text = read_source(args.source)
    if "<!-- Generated by `python benchmarks/report.py`" in text:
        print(f"{args.source or LEGACY}: a generated BENCHMARKS.md, not a hand-kept one (its rows are stored already)", file=sys.stderr)
        return 2
    preamble, sections = parse(text)
    titles = [s.title for s in sections]
    missing = [t for t in args.section or [] if t not in titles]
    if missing:
        print(f"no section titled {missing} in {args.source or LEGACY}; its sections: {titles}", file=sys.stderr)
        return 2
    unlisted = [s.title for s in sections if (args.section is None or s.title in args.section) and question_for(s.title) == FALLBACK]
    if unlisted:
        print(f"list these titles under a question in benchmarks/questions.yaml first: {unlisted}", file=sys.stderr)
        return 2
    found = records(text, LEGACY.name if args.as_legacy or args.source is None else name, args.section)
    chosen = [s for s in sections if args.section is None or s.title in args.section]
    n_rows = sum(len(t.rows) for s in chosen for t in s.tables)
    n_par = (len(preamble) if args.section is None else 0) + sum(len(s.paragraphs) + sum(len(t.notes) for t in s.tables) for s in chosen)
    fresh = new_records(found, [r for _, r in load_all(RESULTS)])
    print(f"{len(chosen)} sections, {sum(len(s.tables) for s in chosen)} tables, {n_rows} rows, {n_par} paragraphs -> {len(found)} records; "
          f"not stored yet: {len(fresh)} records, {sum(len(r['rows']) for r in fresh)} rows, {sum(len(r['notes']) for r in fresh)} paragraphs")
    if args.dry_run:
        for r in fresh:
            print(f"  would store {r['question']}/{r['title']!r} {r['table']}: {len(r['rows'])} rows, {len(r['notes'])} paragraphs")
        return 0
    for record in fresh:
        path = save(record, regenerate=False)
        print(f"  stored {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if args.as_legacy and args.source is not None:
        LEGACY.write_text(text)
        print(f"  kept {args.source} as {LEGACY.relative_to(ROOT)}")
    from harness.report import write

    print("BENCHMARKS.md " + ("rewritten" if write() else "unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
