"""The shared helpers of the script not yet ported to the harness (gpu_acceptance.py): re-exported from ``harness``, their
one home. ``append_row`` now stores the row as a result record (``benchmarks/results/<question>/``) and
regenerates BENCHMARKS.md from the results, rather than editing the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.machine import cores, cpu_model, gpu_name, load_note, machine  # noqa: E402, F401
from harness.report import BENCHMARKS  # noqa: E402, F401
from harness.results import ROOT, command_line, save_row, today  # noqa: E402, F401
from harness.timing import current_rss_mib, fmt_spread, median, peak_rss_mib, spread  # noqa: E402, F401
from harness.workloads import (  # noqa: E402, F401
    ARCHS, add_data_args, add_workload_args, bench_input, load_run, make_checkpoints, prepare_like_a_task, prod, synth_input, workload,
)

TITLE = "# Benchmarks\n"
#: The old last table of BENCHMARKS.md (synth_memory.py, predict_memory.py).
MEMORY_SECTION = "Data generation and prediction memory"


def append_row(section: str, columns: Sequence[str], cells: Sequence[object], path: Path = BENCHMARKS) -> str:
    """One row of the table titled ``section``, stored as a result record (its question from
    benchmarks/questions.yaml) and BENCHMARKS.md regenerated; returns the row as markdown. ``path`` is
    kept for the old signature: BENCHMARKS.md is always the generated one."""
    suite = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "script"
    return save_row(suite, section, columns, cells)


def dumps(obj: object) -> str:
    return json.dumps(obj, default=float)
