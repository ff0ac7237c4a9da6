#!/usr/bin/env bash
# GPU acceptance: the first thing to run on a machine with a GPU (issues 15 and 29); under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_acceptance.sh [OUT_DIR] [extra arguments of benchmarks/gpu_acceptance.py]
#
# Needs the package with its cuda and bench extras (pip install -e '.[cuda,bench]'). On a machine
# without internet, put the missing wheels in .whl/ (see benchmarks/README.md): they are installed
# into /tmp/site first. A trained model and image in .gpu_accept/ (dna.ckpt, image.zarr) are used for
# the bf16 bound when present. Writes OUT_DIR/results.json, log.txt, nvidia_smi.txt, and with
# --append the rows of BENCHMARKS.md (copied to OUT_DIR).
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_acceptance_out}}"
shift || true
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
device=cuda  # the import check follows --device of gpu_acceptance.py (cpu: a dry run)
prev=
for a in "$@"; do
    if [ "$prev" = "--device" ]; then device="$a"; fi
    case "$a" in --device=*) device="${a#--device=}" ;; esac
    prev="$a"
done
# Every module the run needs, first: one line naming each missing one and exit 3, in seconds
"$py" benchmarks/check_imports.py --device "$device" 2>&1 | tee "$out/imports.txt" || exit 3
{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit --format=csv; } >"$out/nvidia_smi.txt" 2>&1
"$py" -c "import torch, dask, distributed, zarr; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| dask', dask.__version__, '| zarr', zarr.__version__)" 2>&1 | tee "$out/env.txt"
trained=()
if [ -e .gpu_accept/dna.ckpt ] && [ -e .gpu_accept/image.zarr ]; then
    trained=(--trained .gpu_accept/dna.ckpt .gpu_accept/image.zarr)
fi
# The script bounds each section and itself (a watchdog); `timeout` is the last resort: SIGTERM, then SIGKILL 15 s later
timeout -k 15 "${ACCEPT_TIMEOUT:-540}" "$py" benchmarks/gpu_acceptance.py --out "$out" "${trained[@]}" "$@" 2>&1 | tee "$out/log.txt"
