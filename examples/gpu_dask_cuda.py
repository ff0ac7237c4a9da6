"""Chunked ensemble prediction on every GPU of one machine with dask-cuda (one dask worker per GPU).

    pip install 'chunked_fnet[cuda,viz]'
    python examples/gpu_dask_cuda.py IMAGE.zarr --models dna.ckpt membrane.ckpt --out PRED.zarr
    python examples/gpu_dask_cuda.py --from example_end_to_end      # the end-to-end example's time-lapse and models

The same as ``chunked-fnet predict IMAGE.zarr --models ... --out PRED.zarr --cluster cluster/cuda.yaml
--device cuda``: dask-cuda's LocalCUDACluster (on 127.0.0.1) starts one worker per visible GPU and pins
it to that GPU (CUDA_VISIBLE_DEVICES), so ``cuda`` in a task is that worker's own GPU; each worker loads
each checkpoint once and runs the stacked ensemble on patches as large as the GPU's memory allows
(one block at a time, in the worker's device thread, while its other threads read and write), with bf16 autocast
(``precision: auto``: bf16 is native on CUDA).
Only chunk coordinates travel through the scheduler. Afterwards it draws the merged overlay (Figure 5).

Expected output on a machine with N GPUs (sizes depend on the input):

    GPUs: N (NVIDIA ...)
    wrote PRED.zarr: T chunk tasks on N worker(s) in S s, V M output voxels x structures, R M voxels/s
    figure: PRED_overlay.png
    view it:  chunked-fnet view PRED.zarr --input IMAGE.zarr

Without a GPU it stops at once with "no CUDA device is visible: ..." (use examples/end_to_end.py or
``--cluster cluster/local.yaml`` on a CPU); without dask-cuda it says how to install it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="input OME-Zarr (transmitted light)")
    parser.add_argument("--models", nargs="+", help="one checkpoint per structure")
    parser.add_argument("--out", help="output OME-Zarr (never overwritten)")
    parser.add_argument("--from", dest="example", help="use examples/end_to_end.py's output folder for image and models")
    parser.add_argument("--batch-size", default="auto", help="patches per forward pass on each GPU (auto: one patch as large as the GPU's memory allows)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device is visible: this example needs a GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        print("this example needs dask-cuda: pip install 'chunked_fnet[cuda]'", file=sys.stderr)
        return 2
    if args.example:
        root = Path(args.example)
        image = str(root / "timelapse.zarr")
        models = sorted(str(p) for p in root.glob("run_*/*.ckpt"))
        out = args.out or str(root / "prediction_gpu.zarr")
    else:
        if not (args.image and args.models and args.out):
            parser.error("give IMAGE.zarr --models ... --out PRED.zarr, or --from EXAMPLE_DIR")
        image, models, out = args.image, args.models, args.out
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    print(f"GPUs: {torch.cuda.device_count()} ({names})")

    from chunked_fnet import open_image
    from chunked_fnet.cluster import load_cluster_spec, local_client
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.viz.figures import overlay_figure, save_figure

    spec = load_cluster_spec(Path(__file__).resolve().parents[1] / "cluster" / "cuda.yaml")
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    options = PredictOptions(device="cuda", batch_size=batch, chunks=(64, 256, 256))  # patch auto: sized for the GPU's total memory
    with local_client(spec) as client:
        _, summary = predict(image, models, out, options=options, client=client)
    print(summary)
    figure = save_figure(overlay_figure(open_image(out), open_image(image)), Path(out).with_name(Path(out).stem + "_overlay.png"))
    print(f"figure: {figure}")
    print(f"view it:  chunked-fnet view {out} --input {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
