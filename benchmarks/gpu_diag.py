"""Diagnosis: where the GPU time of one block task goes (in this process and inside a dask-cuda worker)."""
import sys, time, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import torch


def timed_block(run, task, prof=True):
    """``run``: the (job, policy) pair a block task gets."""
    from chunked_fnet.predict.job import predict_block
    predict_block(run, task)
    torch.cuda.synchronize()
    t = time.perf_counter()
    predict_block(run, task)
    torch.cuda.synchronize()
    plain = time.perf_counter() - t
    table = ""
    if prof:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            predict_block(run, task)
            torch.cuda.synchronize()
        table = p.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60)
    import threading
    return {"seconds": plain, "thread": threading.current_thread().name, "tf32": torch.backends.cudnn.allow_tf32,
            "bench": torch.backends.cudnn.benchmark, "cudnn": torch.backends.cudnn.enabled, "cudnn_version": torch.backends.cudnn.version(),
            "threads": torch.get_num_threads(), "table": table}


def bare(ckpt, frame, precision):
    from chunked_fnet.model import load_checkpoint
    torch.backends.cudnn.benchmark = True
    m = load_checkpoint(ckpt)[0].inference_copy().eval().cuda()
    x = torch.randn(1, 1, *frame, device="cuda")
    def step():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            m(x)
    step(); step(); torch.cuda.synchronize()
    t = time.perf_counter(); step(); torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    import dask
    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, plan
    from chunked_fnet.predict.prepare import cluster_hardware
    data = Path("/tmp/diag"); data.mkdir(exist_ok=True)
    frame = (64, 512, 512)
    img = C.bench_input(data, 1, frame)
    ck = C.make_checkpoints(data / "models", "default", 1)[0]
    for precision in ("fp32", "bf16"):
        print(precision, "bare in client:", bare(ck, frame, precision), flush=True)
    with local_client(ClusterSpec(kind="cuda")) as client:
        for precision in ("fp32", "bf16"):
            with dask.config.set(scheduler="synchronous"):
                job = plan(img, [ck], str(data / f"o_{precision}.zarr"), PredictOptions(device="cuda", precision=precision))
            policy = job.resolve_policy(cluster_hardware(client, "cuda"))  # as predict() sizes the window for this cluster
            task = job.schedule(policy.window).blocks[0]
            print(precision, "window", policy.window.patch_shape, flush=True)
            r = timed_block((job, policy), task, prof=precision == "fp32")
            print(precision, "in client process:", json.dumps({k: v for k, v in r.items() if k != "table"}), flush=True); print(r["table"], flush=True)
            print(precision, "bare in worker (client.run):", client.run(bare, ck, frame, precision), flush=True)
            r = client.submit(timed_block, (job, policy), task, pure=False).result()
            print(precision, "as a worker task:", json.dumps({k: v for k, v in r.items() if k != "table"}), flush=True); print(r["table"], flush=True)


if __name__ == "__main__":
    main()
