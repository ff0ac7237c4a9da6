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


def test_the_dry_run_produces_every_section_in_order_and_a_section_past_its_bound_does_not_stop_the_rest(tmp_path: Path) -> None:
    """The whole acceptance script at tiny sizes on the CPU, as on a GPU host: every section in the
    issue's order, each with its figures; the projection given a bound it cannot meet is cut off and
    recorded as timed out, and the sections after it still run; results.json holds it all."""
    import json

    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_acceptance.sh"), str(out), "--device", "cpu", "--tiny", "--data", str(tmp_path),
         "--bound", "4_projection=2",
         # the GPU bounds are for a GPU: on a busy 2-core CI machine the tiny sections may take longer (emulated bf16)
         "--bound", "1_timelapse=300", "--bound", "3_device_rates=200", "--bound", "6_training=300"],
        capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    order = ["1_timelapse", "2_equal_to_cpu", "3_device_rates", "4_projection", "5_memory", "6_training"]
    assert results["order"] == order
    log = (out / "log.txt").read_text()
    starts = [log.index(f"== {name}") for name in order]
    assert starts == sorted(starts), "sections ran out of order"
    for name in order:
        assert "error" not in results[name], (name, results[name].get("traceback"))
    s1 = results["1_timelapse"]
    assert s1["frames"] == 32 and set(s1["M_vox_s"]) == {"predict", "bare", "monai"}
    assert set(s1["ratios"]) == {"predict/bare", "predict/monai"} and s1["ratios"]["predict/bare"]["target"] == 0.75
    assert s1["predict_rounds"][0]["execute_seconds"] < s1["predict_rounds"][0]["call_seconds"]  # planning outside the timer
    assert s1["bare_layout"] == "channels_last_3d"  # predict's layout on the CPU
    assert results["2_equal_to_cpu"]["seeded paper U-Net, fp32"]["pass"] is True
    s3 = results["3_device_rates"]
    assert {"fp32 NCDHW", "bf16 NCDHW", "bf16 channels_last_3d"} <= set(s3["bare_forward_whole_frame"])
    assert any("torch.compile" in k for k in s3["bare_forward_whole_frame"]) and "best_fraction_of_bf16_matmul" in s3
    s4 = results["4_projection"]
    assert "timed_out" in s4 and "past its bound of 2 s" in s4["timed_out"] and s4["seconds"] < 15
    assert results["5_memory"]["auto_patch"]["estimate_GiB"] > 0
    s6 = results["6_training"]
    assert {"chunked_fnet_bf16", "chunked_fnet_fp32", "pytorch_fnet"} <= set(s6) and s6["chunked_fnet_fp32"]["iteration_s"] > 0
    assert not list(tmp_path.glob("gpu_acceptance_*"))  # its inputs, models and outputs removed
