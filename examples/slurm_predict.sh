#!/usr/bin/env bash
# Chunked ensemble prediction on a SLURM cluster with dask-jobqueue, using cluster/slurm.yaml.
#
#   pip install 'chunked_fnet[cluster,viz]'
#   cp cluster/slurm.yaml my_slurm.yaml    # set queue/partition, account, cores, memory, GPUs, interface
#   SPEC=my_slurm.yaml bash examples/slurm_predict.sh /shared/IMAGE.zarr /shared/PRED.zarr dna.ckpt membrane.ckpt
#
# Run it on a login node (or inside an interactive allocation): the client and the dask scheduler
# run here, and dask-jobqueue submits `jobs:` SLURM jobs (sbatch), each one dask worker. Every
# worker reads the input and writes its own output chunks directly, so IMAGE.zarr, PRED.zarr and the
# checkpoints must be on a filesystem all nodes see (or be object-store URLs). Only chunk coordinates
# travel through the scheduler. If the allocation ends or a node dies mid-run, rerun the same command
# with --resume added to the predict line: finished chunks are kept.
#
# Expected output (numbers depend on the image and the nodes):
#   wrote /shared/PRED.zarr: 480 chunk tasks on 4 worker(s) in 212.4 s, 1650.00 M output voxels x structures, ...
#   /shared/PRED.zarr  (OME-NGFF 0.5, level 0 of 3)
#     dims t, c, z, y, x  shape (...)  chunks (1, 1, 32, 256, 256)  float32
#     channels: dna, membrane
#   figure: /shared/PRED_overlay.png
#   figure: /shared/PRED_timelapse.png
#   view it (from a machine that sees the files):  chunked-fnet view /shared/PRED.zarr --input /shared/IMAGE.zarr
set -euo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: SPEC=cluster/slurm.yaml bash $0 IMAGE.zarr PRED.zarr MODEL.ckpt [MODEL.ckpt ...]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
spec="${SPEC:-$here/cluster/slurm.yaml}"
image="$1"
out="$2"
shift 2

if ! "${PYTHON:-python3}" -c "import dask_jobqueue" 2>/dev/null; then
    echo "dask-jobqueue is missing: pip install 'chunked_fnet[cluster]'" >&2
    exit 2
fi
if ! command -v sbatch >/dev/null 2>&1; then
    echo "no sbatch on this machine: run this on a SLURM login node" >&2
    exit 2
fi

# the prediction: one task per output chunk, spread over the SLURM workers; a 3-level pyramid for viewers
chunked-fnet predict "$image" --models "$@" --out "$out" --cluster "$spec" --levels 3 --no-progress

# the figures, straight from the written store (only the planes shown are read)
chunked-fnet figure overlay "$out" --input "$image" --out "${out%.zarr}_overlay.png"
chunked-fnet figure timelapse "$out" --input "$image" --out "${out%.zarr}_timelapse.png"
echo "view it (from a machine that sees the files):  chunked-fnet view $out --input $image"
