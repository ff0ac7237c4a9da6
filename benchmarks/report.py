"""``python benchmarks/report.py``: generate BENCHMARKS.md from the stored results (harness/report.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
