"""benchmarks/gpu_acceptance.sh cannot waste a GPU host's minutes on a missing wheel: its first step
(benchmarks/check_imports.py) names every module that does not import, on one line, and exits 3
before anything slow starts (issue 29 item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_missing_module_stops_the_script_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_acceptance.sh"), str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env=_env(CHUNKED_FNET_ACCEPT_REQUIRE="definitely_missing_module_xyz"),
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout
    assert "MISSING MODULES" in lines[0] and "definitely_missing_module_xyz" in lines[0]
    assert not (out / "results.json").exists() and not (out / "log.txt").exists()  # nothing slow started


def test_check_names_every_missing_module() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import check_imports

    assert check_imports.missing_modules(["json", "definitely_missing_module_xyz", "os.definitely_missing_xyz"]) == [
        "definitely_missing_module_xyz", "os.definitely_missing_xyz",
    ]
    cpu = check_imports.required_modules("cpu")
    for name in ("torch", "numpy", "dask", "distributed", "zarr", "numcodecs", "pydantic", "xarray", "yaml", "skimage"):
        assert name in cpu
    assert "dask_cuda" not in cpu and "dask_cuda" in check_imports.required_modules("cuda")
    assert check_imports.main(["--device", "cpu"]) == 0  # this environment has the package's dependencies
