"""The inference patch is chosen once per run from the workers' memory (not the training patch),
kept in the run record, reused on resume, and the output stays independent of chunking and workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.predict.policy import PATCH_MEMORY_FRACTION, Hardware, ModelConstraints, resolve_policy
from chunked_fnet.predict.shipping import JobRef, resolve_run
from chunked_fnet.sliding_window import SlidingWindow
from chunked_fnet.predict.policy import AUTO_OVERLAP, auto_patch
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint, two_host_client


def test_auto_patch_takes_the_whole_depth_and_as_much_y_x_as_memory_allows() -> None:
    small, _ = auto_patch((48, 384, 384), 16, 32, 0.5e9)
    large, overlap = auto_patch((48, 384, 384), 16, 32, 12e9)
    assert small[0] == large[0] == 48  # the whole z-depth
    assert small[1] < large[1] == 384 and overlap == (0, 0, 0)  # the whole frame fits: one patch, no overlap
    patch, overlap = auto_patch((64, 1024, 1024), 16, 32, 30e9)
    assert all(p % 16 == 0 for p in patch) and overlap == (0, AUTO_OVERLAP, AUTO_OVERLAP)
    assert patch[0] * patch[1] * patch[2] * 32 * 32 <= 30e9  # within the budget
    window = SlidingWindow((64, 1024, 1024), patch, overlap, 16, "band", align=True)
    assert window.grid.recompute_factor < 1.5  # against ~2.4 for the training patch with 25 % overlap
    # a single frame on several threads is cut into at least that many patches
    patch, _ = auto_patch((48, 384, 384), 16, 32, 12e9, min_patches=4)
    assert SlidingWindow((48, 384, 384), patch, (0, 32, 32), 16, "band", align=True).grid.n_patches >= 4


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("auto")
    generate(SynthConfig(size_t=2, size_z=9, size_y=224, size_x=72, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 40, 40)), root / "in.zarr", progress=False)
    return root, root / "in.zarr", [tiny_checkpoint(root / "dna.ckpt")]


def _record(out: Path) -> dict:
    return json.loads((out / ".chunked_fnet" / "run.json").read_text())


def test_auto_window_is_recorded_chunk_invariant_and_reused_on_resume(data) -> None:
    root, image, models = data
    outputs = []
    options = dict(time=(0, 1), precision="fp32")  # one frame on two hosts: auto cuts it into two patches
    for k, chunks in enumerate([(9, 224, 72), (4, 24, 40)]):
        with two_host_client("1GiB") as client:
            out, _ = predict(image, models, root / f"o{k}.zarr", options=PredictOptions(chunks=chunks, shards="none", **options), client=client, progress=False)
        window = _record(root / f"o{k}.zarr")["window"]
        expected_patch, expected_overlap = auto_patch((9, 224, 72), 4, 4, PATCH_MEMORY_FRACTION * 2**30, min_patches=2)
        assert {k: window[k] for k in ("patch", "overlap", "blend", "align")} == {
            "patch": list(expected_patch), "overlap": list(expected_overlap), "blend": "band", "align": True}
        assert expected_overlap[1] == AUTO_OVERLAP and expected_patch[1] < 224  # two patches along y, blended across 96 voxels
        outputs.append(out.values)
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5, rtol=0)
    # a resume on another cluster (one worker: auto would now choose one patch) keeps the recorded window
    (root / "o1.zarr" / ".chunked_fnet" / "done" / "t0-z4-y24-x40").unlink()
    with local_client(ClusterSpec(n_workers=1, memory_limit="2GiB")) as client:
        resumed, summary = predict(image, models, root / "o1.zarr", options=PredictOptions(chunks=(4, 24, 40), shards="none", **options), client=client, resume=True, progress=False)
    assert summary.chunks == 1
    np.testing.assert_allclose(resumed.values, outputs[0], atol=1e-5, rtol=0)


def test_auto_patch_stays_within_32_bit_kernel_indexing_and_batches_share_the_budget() -> None:
    """However much memory a GPU has, the largest activation of a patch (2 x width channels) stays
    under 2**31 elements (cuDNN/oneDNN index with 32-bit integers); an explicit batch of several patches
    with an auto patch shares the memory budget, and ``batch_size: auto`` means one auto patch at a time."""
    from chunked_fnet.predict.policy import MAX_TENSOR_ELEMENTS

    patch, _ = auto_patch((64, 4096, 4096), 16, 32, 1e13)  # a 10 TB budget
    assert 2 * 32 * patch[0] * patch[1] * patch[2] <= MAX_TENSOR_ELEMENTS
    assert patch[1] >= 512  # still large
    def batch(**options):  # noqa: ANN003, ANN202
        return resolve_policy(PredictOptions(**options), (48, 384, 384), ModelConstraints(), Hardware(12e9)).batch_size

    assert batch() == 1 and batch(patch_shape=(32, 64, 64), overlap=0.25) == 4 and batch(batch_size=8) == 8
    one, eight = (resolve_policy(PredictOptions(batch_size=b), (48, 2048, 2048), ModelConstraints(), Hardware(12e9)) for b in (1, 8))
    assert np.prod(eight.window.patch_shape) < np.prod(one.window.patch_shape)  # eight patches share one patch's budget
    with pytest.raises(ValueError, match="batch_size"):
        PredictOptions(batch_size=0)


def test_one_frame_on_two_threads_is_cut_once_across_its_longer_axis_not_into_four() -> None:
    """Patches need not be square: the fewest voxels evaluated among the cuts that fit the budget and
    keep every thread busy (with a 96-voxel overlap, four patches of a 384^2 frame evaluate it 1.56x
    over, two 1.25x)."""
    patch, overlap = auto_patch((48, 384, 384), 16, 32, 6.4e9, min_patches=2)
    window = SlidingWindow((48, 384, 384), patch, overlap, 16, "band", align=True)
    assert window.grid.n_patches == 2 and window.grid.recompute_factor == pytest.approx(1.25)
    assert patch[0] * patch[1] * patch[2] * 32 * 32 <= 6.4e9
    patch, overlap = auto_patch((48, 200, 384), 16, 32, 6.4e9, min_patches=2)
    assert overlap == (0, 0, AUTO_OVERLAP) and patch[1] == 208  # the cut goes across the longer axis, x


def test_the_blocks_of_one_frame_start_one_on_each_worker_and_the_job_leaves_with_the_run(data) -> None:
    """Tasks carry a reference to the job, which a worker plugin holds on every worker: the two blocks of
    a one-frame run on two hosts go one to each idle worker at once (with the job as a key of the graph, the
    scheduler put both on the worker holding it, and the other worker got one only by work stealing,
    0.4-1.9 s later on a paper U-Net), and no plugin is left on the workers after the run."""
    from distributed import get_task_stream

    root, image, models = data
    with two_host_client("1GiB") as client:
        with get_task_stream(client) as stream:
            predict(image, models, root / "ship.zarr", options=PredictOptions(time=(0, 1), precision="fp32", chunks=(9, 112, 72)), client=client, progress=False)
        blocks = [t for t in stream.data if str(t["key"]).startswith("cfnet-block")]
        assert len(blocks) == 2 and len({t["worker"] for t in blocks}) == 2, [(t["key"], t["worker"]) for t in blocks]
        assert not [e for _, e in client.get_events("stealing") if "cfnet-block" in str(e)]
        left = client.run(lambda dask_worker: [n for n in dask_worker.plugins if n.startswith("chunked_fnet-run")])
        assert all(names == [] for names in left.values()), left
        # a task whose run has ended (its plugin gone) says so instead of failing on a missing key
        with pytest.raises(RuntimeError, match="has no plugin 'chunked_fnet-run-gone': the run that submitted this task has ended"):
            client.submit(resolve_run, JobRef("chunked_fnet-run-gone", 0), pure=False).result()


def test_one_frame_on_one_host_is_one_block_on_all_its_threads_with_the_same_output(data) -> None:
    """On one host (a 2-worker LocalCluster), a frame that fits is not cut into a patch per thread, which
    would evaluate the overlap twice: it is one patch, and its block runs on both threads (torch's); the
    output equals a one-thread run's."""
    import torch
    from distributed import get_task_stream

    root, image, models = data
    options = PredictOptions(time=(0, 1), precision="fp32", chunks=(9, 112, 72))
    with local_client(ClusterSpec(n_workers=2, memory_limit="1GiB")) as client:
        def in_task_thread(worker: str, fn, *args):  # torch's thread count is per calling thread: ask the task thread
            return client.submit(fn, *args, workers=[worker], allow_other_workers=False, pure=False).result()

        for worker in client.scheduler_info()["workers"]:
            in_task_thread(worker, torch.set_num_threads, 1)
        with get_task_stream(client) as stream:
            out, summary = predict(image, models, root / "host.zarr", options=options, client=client, progress=False)
        blocks = [t for t in stream.data if str(t["key"]).startswith("cfnet-block")]
        assert len(blocks) == 1 and summary.policy.window.patch_shape == (12, 224, 72)  # the whole frame (z on the U-Net's multiple of 4)
        assert in_task_thread(blocks[0]["worker"], torch.get_num_threads) == 2
    with local_client(ClusterSpec(n_workers=1, memory_limit="1GiB")) as client:
        single, _ = predict(image, models, root / "host1.zarr", options=options, client=client, progress=False)
    np.testing.assert_allclose(out.values, single.values, atol=1e-5, rtol=0)


def test_block_threads_share_the_task_threads_among_blocks_at_most_a_host_each() -> None:
    """The policy gives each block task the cluster's task threads divided by the run's blocks, never more
    than one host's; the cluster's facts say how many threads each host has."""
    from chunked_fnet.predict.prepare import cluster_hardware

    def threads(hardware: Hardware, frames: int) -> int:  # one block per frame: a whole-frame patch
        return resolve_policy(PredictOptions(), (9, 64, 64), ModelConstraints(4, (4, 4, 4), width=4), hardware, frames=frames).block_threads

    with local_client(ClusterSpec(n_workers=2, threads_per_worker=1)) as client:
        two_workers = cluster_hardware(client, "cpu")
    with local_client(ClusterSpec(n_workers=1, threads_per_worker=2)) as client:
        two_threads = cluster_hardware(client, "cpu")
    with two_host_client() as client:
        two_hosts = cluster_hardware(client, "cpu")
    assert two_workers.threads_per_host == two_threads.threads_per_host == (2,) and two_hosts.threads_per_host == (1, 1)
    assert two_hosts.busy == 2 and two_workers.busy == 1  # a CPU host each, not a thread each
    assert [threads(two_workers, b) for b in (1, 2, 5)] == [2, 1, 1]
    assert [threads(two_threads, b) for b in (1, 2, 4)] == [2, 1, 1]  # not 2 x 2 threads for two blocks at once
    assert [threads(two_hosts, b) for b in (1, 2)] == [1, 1]  # a block never gets another host's threads
