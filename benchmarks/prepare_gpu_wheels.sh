#!/usr/bin/env bash
# Wheels for a GPU host without internet (Python 3.12, torch present), into .whl/ (git-ignored):
#
#   bash benchmarks/prepare_gpu_wheels.sh [PYTHON]    # PYTHON: the interpreter whose installed versions are pinned (default python3)
#
# then carry .whl with the run (the device tool: carry [".whl"]); benchmarks/gpu_acceptance.sh installs
# them into /tmp/site and checks every import (benchmarks/check_imports.py) before anything slow.
# The packages gpu_acceptance.sh's import check has been seen to lack there, at this project's pinned
# versions where PYTHON has them (else the newest), without dependencies (--no-deps: torch and its CUDA
# libraries stay the host's); dask-cuda and its own needs at the newest version.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
names="dask distributed zarr numcodecs donfig google-crc32c pydantic pydantic-core annotated-types typing-inspection
monai partd locket tblib zict tornado toolz cloudpickle msgpack sortedcontainers crc32c xarray pandas tzdata fsspec
safetensors tifffile imagecodecs scikit-image imageio lazy-loader networkx tifffile psutil pyyaml tqdm
dask-cuda pynvml nvidia-ml-py numba llvmlite rapids-dask-dependency"
specs=()
for n in $names; do
    v="$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$n" 2>/dev/null || true)"
    specs+=("$n${v:+==$v}")
done
mkdir -p .whl
for s in "${specs[@]}"; do  # one at a time: a pin with no 3.12 wheel is reported, the others still come
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl "$s" || echo "NO WHEEL: $s" >&2
done
ls .whl | wc -l
