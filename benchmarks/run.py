"""``python benchmarks/run.py SUITE MEASUREMENT [options]``: run one measurement of a suite
(``python benchmarks/run.py`` lists them; ``... SUITE MEASUREMENT --help`` its options)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suites import SUITES  # noqa: E402


def usage() -> str:
    lines = ["usage: python benchmarks/run.py SUITE MEASUREMENT [options]", ""]
    for suite, measurements in SUITES.items():
        for name, module in measurements.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
            lines.append(f"  {suite + ' ' + name:<32} {doc[0] if doc else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in SUITES or argv[1] not in SUITES[argv[0]]:
        print(usage(), file=sys.stderr if argv else sys.stdout)
        return 0 if not argv else 2
    module = importlib.import_module(SUITES[argv[0]][argv[1]])
    module.main(argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
