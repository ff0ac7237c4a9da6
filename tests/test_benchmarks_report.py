"""BENCHMARKS.md is generated from the stored results and keeps every row and paragraph of the
hand-kept file it replaced; result records never overwrite each other; the one timing helper
interleaves its methods; the benchmarks call the package's public API only. No timings asserted."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from harness import import_markdown, report, results  # noqa: E402
from harness.questions import FALLBACK, QUESTIONS, question_for  # noqa: E402
from harness.timing import interleave  # noqa: E402


def test_committed_benchmarks_md_is_what_the_results_generate() -> None:
    assert (ROOT / "BENCHMARKS.md").read_text() == report.render(), "run `python benchmarks/report.py` (never edit BENCHMARKS.md by hand)"


def _rendered_rows(text: str) -> list[list[str]]:
    return [import_markdown.split_row(line) for line in text.splitlines() if line.startswith("|")]


def test_every_row_paragraph_and_title_of_the_hand_kept_file_is_in_the_generated_one() -> None:
    legacy = import_markdown.LEGACY.read_text()
    new = (ROOT / "BENCHMARKS.md").read_text()
    preamble, sections = import_markdown.parse(legacy)
    rows = [set(r) for r in _rendered_rows(new)]
    old_rows = [(s.title, r) for s in sections for t in s.tables for r in [t.header, *t.rows]]
    assert len(old_rows) > 100
    for title, cells in old_rows:
        assert any(set(cells) <= r for r in rows), (title, cells[:3])
    paragraphs = preamble + [p for s in sections for p in s.paragraphs + [n for t in s.tables for n in t.notes]]
    blocks = [b for b in legacy.split("\n\n") if b.strip() and not b.lstrip().startswith(("|", "#"))]
    assert len(paragraphs) == len(blocks) > 20  # the parser found every prose block
    for p in paragraphs:
        assert p in new, p[:80]
    for s in sections:
        assert f"### {s.title}\n" in new
        assert question_for(s.title) != FALLBACK, f"{s.title!r}: list it under a question in benchmarks/questions.yaml"


_OLD_STYLE = """# Benchmarks

A preamble.

## Scaling (issue 6.4)

How to read it.

| date | a | command | machine |
|---|---|---|---|
| 2026-01-01 | 1 | `c` | m |
"""


def test_the_import_stores_only_rows_and_paragraphs_no_record_has(tmp_path: Path) -> None:
    first = import_markdown.new_records(import_markdown.records(_OLD_STYLE), [])
    assert [(r["question"], len(r["rows"]), r["notes"]) for r in first] == [("general", 0, ["A preamble."]),
                                                                             ("throughput", 1, ["How to read it."])]
    for record in first:
        results.save(record, root=tmp_path, regenerate=False)
    stored = [r for _, r in results.load_all(tmp_path)]
    assert import_markdown.new_records(import_markdown.records(_OLD_STYLE), stored) == []  # a rerun stores nothing
    later = (_OLD_STYLE + "| 2026-01-02 | 2 | `c` | m |\n| 2026-01-01 | 1 | `c` | m |\n\nA paragraph added below the table.\n\n"
             "## Read amplification (issue 29)\n\n| date | total |\n|---|---|\n| 2026-01-03 | 2.00 |\n")
    fresh = import_markdown.new_records(import_markdown.records(later), stored)
    assert [(r["title"], [row["a" if "a" in row else "total"] for row in r["rows"]], r["notes"]) for r in fresh] == [
        ("Scaling (issue 6.4)", ["2"], ["A paragraph added below the table."]),  # the stored row's new paragraph moves on
        ("Scaling (issue 6.4)", ["1"], []),  # the source has that row twice, the records once
        ("Read amplification (issue 29)", ["2.00"], []),
    ]
    only = import_markdown.records(later, only=["Read amplification (issue 29)"])
    assert [(r["question"], r["rows"][0]["total"]) for r in only] == [("storage", "2.00")]


def test_the_import_refuses_a_generated_file_and_unlisted_titles_and_the_kept_copy_is_all_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert import_markdown.main(["--from", str(ROOT / "BENCHMARKS.md"), "--dry-run"]) == 2
    unlisted = tmp_path / "old.md"
    unlisted.write_text(_OLD_STYLE.replace("Scaling (issue 6.4)", "A title no question lists"))
    assert import_markdown.main(["--from", str(unlisted), "--dry-run"]) == 2
    assert "questions.yaml" in capsys.readouterr().err
    assert import_markdown.main(["--dry-run"]) == 0
    assert "not stored yet: 0 records, 0 rows, 0 paragraphs" in capsys.readouterr().out


def test_questions_file_lists_titles_as_strings_each_under_one_question() -> None:
    titles = [t for q in QUESTIONS.values() for t in q["titles"]]
    assert all(isinstance(t, str) for t in titles)  # a YAML "a: b" title would silently become a mapping
    assert len(titles) == len(set(titles))
    assert all(q["heading"] and q["prose"] for q in QUESTIONS.values())


def test_records_never_overwrite_and_the_report_shows_newest_first_with_every_row(tmp_path: Path) -> None:
    def rec(date: str, value: str, extra: dict | None = None) -> dict:
        return results.make("demo", "throughput", "A table", rows=[{"value": value, **(extra or {})}], figures={"x": 1},
                            date=date, machine="m", command="`c`")

    paths = [results.save(rec("2026-01-01", "old"), root=tmp_path), results.save(rec("2026-01-01", "old2"), root=tmp_path),
             results.save(rec("2026-02-01", "new", {"more": "yes"}), root=tmp_path)]
    assert len(set(paths)) == 3 and paths[1].name.endswith("-2.json")
    assert json.loads(paths[0].read_text())["rows"] == [{"value": "old"}]
    text = report.render(tmp_path)
    lines = [ln for ln in text.splitlines() if ln.startswith("| 2026")]
    assert [ln.split(" | ")[1] for ln in lines] == ["new", "old2", "old"]
    assert "| date | value | command | machine | more |" in text  # columns: union, first seen first
    with pytest.raises(ValueError, match="unknown question"):
        results.make("demo", "no-such-question", "t", machine="m", command="c")


def test_save_row_keeps_the_scripts_columns_and_finds_the_question_by_title() -> None:
    row = results.save_row("x", "Scaling (issue 6.4)", ["date", "a|b"], ["2026-01-01", "1|2"], save_it=False)
    assert row == "| 2026-01-01 | 1\\|2 |"
    assert question_for("Scaling (issue 6.4)") == "throughput" and question_for("nothing like it") == FALLBACK


def test_interleave_runs_methods_in_turn_and_keeps_warmup_apart() -> None:
    calls: list[str] = []
    syncs: list[int] = []
    t = interleave({"A": lambda: calls.append("A"), "B": lambda: calls.append("B"), "C": lambda: calls.append("C")},
                   rounds=2, warmup=1, sync=lambda: syncs.append(1))
    assert calls == list("ABC" * 3)
    assert {k: len(v) for k, v in t.items()} == {"A": 2, "B": 2, "C": 2}
    assert {k: len(v) for k, v in t.warmup.items()} == {"A": 1, "B": 1, "C": 1}
    assert len(syncs) == 2 * 9  # before the clock starts and before it stops, every call


PORTED = [*sorted((BENCH / "harness").glob("*.py")), *sorted((BENCH / "suites").glob("**/*.py")), BENCH / "run.py"]


@pytest.mark.parametrize("path", [p for p in PORTED if p.exists()], ids=lambda p: str(p.relative_to(BENCH)))
def test_ported_benchmarks_use_the_public_api_only(path: Path) -> None:
    tree = ast.parse(path.read_text())
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chunked_fnet"):
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{path.name}: private {node.module}.{alias.name}"
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chunked_fnet"):
                    assert not any(part.startswith("_") for part in alias.name.split(".")), alias.name
                    bound.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            assert not (isinstance(base, ast.Name) and base.id in bound), f"{path.name}:{node.lineno}: private .{node.attr}"
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) > 1:
            arg = node.args[1]
            assert not (isinstance(arg, ast.Constant) and str(arg.value).startswith("_")), f"{path.name}:{node.lineno}: getattr of a private name"


def test_every_suite_measurement_imports_and_the_files_it_runs_exist() -> None:
    import importlib

    from suites import SUITES

    for suite, measurements in SUITES.items():
        for name, module_name in measurements.items():
            module = importlib.import_module(module_name)
            assert callable(module.main), f"{suite} {name}"
    follow_latency = importlib.import_module(SUITES["latency"]["follow"])
    assert follow_latency.WRITER.is_file()  # the writer process (moved suites resolve paths from the repository root)
    vs_peers = importlib.import_module(SUITES["throughput"]["peers"])
    assert vs_peers.RUN.is_file()
