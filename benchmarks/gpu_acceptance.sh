#!/usr/bin/env bash
# GPU acceptance: the first thing to run on a machine with a GPU (issue 15 item 4); under 8 minutes on one H100.
#
#   bash benchmarks/gpu_acceptance.sh [OUT_DIR] [extra arguments of benchmarks/gpu_acceptance.py]
#
# Needs the package with its cuda and bench extras (pip install -e '.[cuda,bench]'). On a machine
# without internet, put the missing wheels in .whl/ (see benchmarks/README.md): they are installed
# into /tmp/site first. A trained model and image in .gpu_accept/ (dna.ckpt, image.zarr) are used for
# the bf16 bound when present. Writes OUT_DIR/results.json, log.txt, nvidia_smi.txt, and with
# --append the rows of BENCHMARKS.md (copied to OUT_DIR).
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_acceptance_out}}"
shift || true
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit --format=csv; } >"$out/nvidia_smi.txt" 2>&1
python3 -c "import torch, dask, distributed, zarr; import dask_cuda; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| dask', dask.__version__, '| dask_cuda', dask_cuda.__version__, '| zarr', zarr.__version__)" 2>&1 | tee "$out/env.txt"
trained=()
if [ -e .gpu_accept/dna.ckpt ] && [ -e .gpu_accept/image.zarr ]; then
    trained=(--trained .gpu_accept/dna.ckpt .gpu_accept/image.zarr)
fi
python3 benchmarks/gpu_acceptance.py --out "$out" "${trained[@]}" "$@" 2>&1 | tee "$out/log.txt"
