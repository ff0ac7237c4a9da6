"""The benchmark harness: one home for the machine row, timing, shared workloads, result records and
the generated BENCHMARKS.md. Not part of the package; importable as ``harness`` with ``benchmarks/`` on
``sys.path`` (``benchmarks/run.py`` and the scripts put it there)."""
