"""Does every module the GPU acceptance run needs import here? Answered in seconds, before anything slow.

    python benchmarks/check_imports.py [--device cuda|cpu] [--also MODULE ...]

Exits 0 when everything imports, else 3 with ONE line on stdout naming every missing module (and why,
when it is there but fails to import), so a GPU host without internet loses seconds, not minutes, to a
wheel that did not travel (``bash benchmarks/prepare_gpu_wheels.sh`` fills ``.whl/``).

The list: the package's runtime dependencies (``pyproject.toml``'s ``dependencies``, as import names),
then what ``benchmarks/gpu_acceptance.py`` itself imports: MONAI (the ``bench`` extra) and, on a GPU,
dask-cuda and pynvml (the ``cuda`` extra). ``--also`` and the environment variable
``CHUNKED_FNET_ACCEPT_REQUIRE`` (comma- or space-separated) add modules (the tests name a fake one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: distribution name (as pyproject.toml spells it, lower case) -> the module(s) to import
IMPORT_NAMES = {
    "dask": ["dask", "dask.array"],  # dask[array]: dask.array imports numpy, toolz and its other needs
    "pyyaml": ["yaml"],
    "scikit-image": ["skimage"],
    "dask-cuda": ["dask_cuda"],
    "cuda-bindings": [],  # checked through torch/dask-cuda: its import name differs between versions
}

#: what gpu_acceptance.py needs beyond the package's dependencies: on every device, and on CUDA only
RUN_MODULES = ["numcodecs", "psutil", "chunked_fnet", "chunked_fnet.predict", "monai"]
CUDA_MODULES = ["dask_cuda", "pynvml"]
#: needed on a GPU, optional in a CPU dry run (the section that uses it records itself as skipped)
OPTIONAL_ON_CPU = {"monai"}


def _dependencies() -> list[str]:
    """The distribution names of pyproject.toml's ``[project] dependencies`` (markers and versions dropped)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the package needs 3.11, but say so through the list
        return ["tomllib"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0].lower() for spec in project["dependencies"]]


def required_modules(device: str = "cuda", also: list[str] | None = None) -> list[str]:
    """Every module the acceptance run on ``device`` imports, in a stable order, without duplicates."""
    modules: list[str] = []
    for dist in _dependencies():
        modules += IMPORT_NAMES.get(dist, [dist.replace("-", "_")])
    modules += RUN_MODULES
    if device.startswith("cuda"):
        modules += CUDA_MODULES
    else:
        modules = [m for m in modules if m not in OPTIONAL_ON_CPU]
    env = os.environ.get("CHUNKED_FNET_ACCEPT_REQUIRE", "")
    modules += [m for m in re.split(r"[,\s]+", env) if m] + list(also or [])
    return list(dict.fromkeys(modules))


def missing_modules(modules: list[str]) -> list[str]:
    """The modules of ``modules`` that do not import: ``name`` when absent, ``name (Error: message)``
    when present but broken (a wheel for another Python, a missing shared library)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            absent = exc.name or name
            missing.append(name if absent == name or name.startswith(absent + ".") else f"{name} (needs {absent})")
        except Exception as exc:  # noqa: BLE001 - any failure to import is a missing module to the run
            missing.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu: a CPU dry run needs neither dask-cuda, pynvml nor MONAI")
    parser.add_argument("--also", nargs="*", default=[], help="more modules that must import")
    args = parser.parse_args(argv)
    modules = required_modules(args.device, args.also)
    missing = missing_modules(modules)
    if missing:
        print(f"MISSING MODULES ({len(missing)} of {len(modules)} needed): {', '.join(missing)}"
              " -- put their wheels in .whl/ (bash benchmarks/prepare_gpu_wheels.sh) and run again", flush=True)
        return 3
    print(f"imports ok: {len(modules)} modules ({', '.join(modules)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
