"""The GPU code path made safe and checked on the CPU (issue 29): a worker's cached models stay in eval
mode whatever its threads do, are converted once, and blending weights are uploaded once."""

from __future__ import annotations

import warnings
import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from chunked_fnet.predict import ensemble
from chunked_fnet.predict.job import ensemble_runner, piece_of, predict_block
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.plan import plan
from chunked_fnet.predict.policy import Hardware
from chunked_fnet.sliding_window import runner
from chunked_fnet.sliding_window.window import WeightedSum
from factories import tiny_checkpoint

OPTIONS = PredictOptions(patch_shape=(8, 16, 16), chunks=(4, 8, 8), overlap=0.25, precision="fp32", device="cpu")


class NormAndDropout(nn.Module):
    """A network whose train mode changes its output: batch norm (batch statistics) and dropout, as a
    bioimage.io package may hold; loaded in eval mode, like every loader returns its networks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv3d(1, 4, 3, padding=1)
        self.middle = nn.Conv3d(4, 4, 3, padding=1)  # 4 -> 4 channels: its weight tells the memory formats apart
        self.norm = nn.BatchNorm3d(4)
        self.drop = nn.Dropout(0.5)
        self.last = nn.Conv3d(4, 1, 1)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.drop(torch.relu(self.norm(self.middle(torch.relu(self.first(x)))))))


@pytest.fixture
def blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A planned job whose one model loads as :class:`NormAndDropout`, its policy and its block tasks,
    with this process's model caches empty (as a fresh worker's)."""
    from chunked_fnet.synth.dataset import SynthConfig, generate

    generate(SynthConfig(size_t=1, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), tmp_path / "in.zarr", progress=False)
    ckpt = tiny_checkpoint(tmp_path / "dna.ckpt")
    job = plan(str(tmp_path / "in.zarr"), [ckpt], tmp_path / "out.zarr", OPTIONS)
    policy = job.resolve_policy(Hardware())
    monkeypatch.setattr(ensemble, "_CACHE", {})
    monkeypatch.setattr(ensemble, "_ENSEMBLES", {}, raising=False)
    monkeypatch.setattr(ensemble, "_load", lambda path, device: NormAndDropout().to(device).eval())
    tasks = job.schedule(policy.window).blocks
    assert len(tasks) >= 4
    return job, policy, tasks


def _values(result) -> list[np.ndarray]:
    return [piece_of(result, i).values for i in range(1 if isinstance(result, WeightedSum) else len(result))]


def test_blocks_in_two_threads_leave_the_shared_model_in_eval_mode_and_equal_one_thread(blocks) -> None:
    """Two task threads of one worker run blocks on the one cached model: one block's end must not put
    it in train mode while another's forward runs (batch norm and dropout would change its output)."""
    job, policy, tasks = blocks
    one = [_values(predict_block((job, policy), t)) for t in tasks]
    (model,) = ensemble._CACHE.values()
    assert isinstance(model, NormAndDropout) and not any(m.training for m in model.modules())
    with ThreadPoolExecutor(2) as pool:
        two = list(pool.map(lambda t: _values(predict_block((job, policy), t)), tasks * 3))
    assert not any(m.training for m in model.modules())
    assert not any(m.training for m in ensemble_runner(job, policy).models[0].modules())
    for i, pieces in enumerate(two):
        for a, b in zip(pieces, one[i % len(tasks)], strict=True):
            np.testing.assert_array_equal(a, b)
    # and what the blocks computed is the model in eval mode (dropout off, running statistics)
    assert np.ptp(np.concatenate([v.ravel() for v in one[0]])) > 0


def test_blocks_convert_the_cached_ensemble_once(blocks, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block of a worker runs one cached ensemble, converted to channels_last_3d once when loaded,
    not converted and back at every block."""
    job, policy, tasks = blocks
    conversions: list[object] = []
    to = nn.Module.to

    def counting_to(self, *args, **kwargs):
        if "memory_format" in kwargs:
            conversions.append(kwargs["memory_format"])
        return to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", counting_to)
    for t in tasks:
        predict_block((job, policy), t)
    assert conversions == [torch.channels_last_3d]  # one member, converted once, never back
    first, again = ensemble_runner(job, policy), ensemble_runner(job, policy)
    assert first.models[0] is again.models[0] and first.channels_last
    weight = first.models[0].members[0].middle.weight
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()


def test_blend_weights_go_to_a_device_once_while_the_array_lives() -> None:
    """A window's weight array is copied to an accelerator once per process (here the meta device,
    which takes the same path as CUDA without one), and forgotten when the array is freed."""
    device = torch.device("meta")
    weights = np.ones((8, 16, 16), dtype=np.float32)
    first = runner.device_weights(weights, device)
    assert first.device.type == "meta" and tuple(first.shape) == weights.shape
    assert runner.device_weights(weights, device) is first
    other = np.ones((8, 16, 16), dtype=np.float32)
    assert runner.device_weights(other, device) is not first  # another array, its own copy
    key = (id(weights), str(device))
    assert key in runner._DEVICE_WEIGHTS
    del weights, first
    gc.collect()
    assert key not in runner._DEVICE_WEIGHTS
    cpu = np.ones((2, 2, 2), dtype=np.float32)
    assert np.shares_memory(runner.device_weights(cpu, torch.device("cpu")).numpy(), cpu)  # the CPU: the array itself


@pytest.mark.parametrize("raised", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("CUDNN_STATUS_INTERNAL_ERROR: out of memory"),
])
def test_out_of_memory_ends_in_one_line_naming_a_patch_that_fits(blocks, monkeypatch: pytest.MonkeyPatch, raised: RuntimeError) -> None:
    """An out-of-memory forward pass ends the run (no retry can fit the same patch) in one line that
    names the patch, the device and its memory, and a smaller patch from the policy's own sizing."""
    import re

    from chunked_fnet.errors import DeviceMemoryError, retryable
    from chunked_fnet.predict.policy import patch_bytes

    job, policy, tasks = blocks

    def exhausted(self, x):
        raise raised

    monkeypatch.setattr(NormAndDropout, "forward", exhausted)
    with pytest.raises(DeviceMemoryError) as caught:
        predict_block((job, policy), tasks[0])
    text = str(caught.value)
    assert "\n" not in text and not retryable(caught.value)
    assert "out of memory on cpu (host memory, " in text and " GiB)" in text
    ran = re.search(r"running patch \[8, 16, 16\] x (\d+) per forward pass", text)
    assert ran and 1 <= int(ran.group(1)) <= policy.batch_size, text
    batch = int(ran.group(1))
    suggested = re.search(r"rerun with patch_shape \[(\d+), (\d+), (\d+)\] and batch_size 1", text)
    assert suggested, text
    patch = tuple(int(n) for n in suggested.groups())
    width = job.constraints.width
    assert patch_bytes(patch, width) <= patch_bytes((8, 16, 16), width, batch) / 2
    assert all(p % job.constraints.multiple == 0 for p in patch)
    assert caught.value.patch == (8, 16, 16) and caught.value.batch == batch and caught.value.device == "cpu"


def test_other_runtime_errors_of_a_forward_pass_are_not_memory_errors(blocks, monkeypatch: pytest.MonkeyPatch) -> None:
    from chunked_fnet.errors import DeviceMemoryError

    job, policy, tasks = blocks

    def broken(self, x):
        raise RuntimeError("Given groups=1, weight of size [4, 1, 3, 3, 3], expected input to have 1 channels")

    monkeypatch.setattr(NormAndDropout, "forward", broken)
    with pytest.raises(RuntimeError, match="expected input to have 1 channels") as caught:
        predict_block((job, policy), tasks[0])
    assert not isinstance(caught.value, DeviceMemoryError)


def test_the_suggested_patch_is_refused_when_none_is_smaller() -> None:
    """At the models' smallest patch there is nothing smaller to suggest: the message says so."""
    from chunked_fnet.predict.policy import ModelConstraints, patch_that_fits

    models = ModelConstraints(16, (16, 16, 16), width=32)
    hint = patch_that_fits(PredictOptions(), (16, 16, 16), models, 80 * 2**30, (16, 16, 16), 1)
    assert hint.startswith("no smaller patch than [16, 16, 16] x 1 works"), hint


@pytest.mark.parametrize(("torch_version", "cudnn", "expected"), [
    ("2.8.0+cu128", 91002, "silently wrong"),  # the known-bad release
    ("2.10.0", 91000, "silently wrong"),  # the rest of 9.10, conservatively
    ("2.9.1+cu130", 91002, "silently wrong"),  # wrong beats slow
    ("2.9.0+cu128", 90800, "slowly"),
    ("2.9.1", 91400, "slowly"),
    ("2.9.0", 91500, None),
    ("2.9.0", 90701, None),
    ("2.8.0", 90800, None),  # slow only under torch 2.9
    ("2.10.0", 91100, None),
    ("2.9.0", 8902, None),  # cuDNN 8.9.2
    ("2.9.0", None, None),  # no cuDNN
])
def test_bf16_conv3d_hazard_by_torch_and_cudnn(torch_version: str, cudnn: int | None, expected: str | None) -> None:
    from chunked_fnet.predict.policy import bf16_conv3d_hazard

    hazard = bf16_conv3d_hazard(torch_version, cudnn)
    assert (hazard is None) if expected is None else (expected in hazard)


def test_cudnn_release_reads_both_numberings() -> None:
    from chunked_fnet.device import cudnn_release

    assert cudnn_release(91002) == (9, 10, 2) and cudnn_release(90800) == (9, 8, 0) and cudnn_release(8902) == (8, 9, 2)


def test_auto_precision_avoids_bf16_where_cudnn_is_known_bad_and_explicit_bf16_warns() -> None:
    """``precision: auto`` on native-bf16 GPUs with a known-bad cuDNN computes fp32 and says why; an explicit
    bf16 there runs as asked with a one-line warning; a good stack keeps bf16, silently."""
    import warnings

    from chunked_fnet.predict.policy import ModelConstraints, resolve_policy

    def policy(precision: str, *stacks: tuple[str, int]):
        hardware = Hardware(device="cuda", native_bf16=True, gpu_stacks=stacks)
        return resolve_policy(PredictOptions(precision=precision), (32, 128, 128), ModelConstraints(), hardware)

    bad = policy("auto", ("2.9.0+cu128", 91500), ("2.8.0+cu128", 91002))  # one bad worker is enough
    assert bad.precision == "fp32" and bad.reason.startswith("auto: bf16 is native, but cuDNN 9.10.2 ") and "silently wrong" in bad.reason
    slow = policy("auto", ("2.9.0+cu128", 91100))
    assert slow.precision == "fp32" and "slowly" in slow.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = policy("auto", ("2.10.0+cu130", 91500))
        assert good.precision == "bf16" and good.reason == "auto: bf16 is native on every cuda worker"
        assert policy("fp32", ("2.8.0", 91002)).precision == "fp32"  # fp32 asked: nothing to warn of
    with pytest.warns(RuntimeWarning, match=r"^precision bf16 as asked, though cuDNN 9\.10\.2 .*precision fp32 or auto avoids it$") as seen:
        explicit = policy("bf16", ("2.8.0", 91002))
    assert explicit.precision == "bf16" and explicit.reason == "explicit"
    assert len(seen) == 1 and "\n" not in str(seen[0].message)


def test_the_stack_line_names_torch_and_the_device_and_is_logged_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker logs what it computes with once (here the CPU: torch and its threads; on a GPU also CUDA,
    cuDNN and the GPU's name and memory)."""
    import logging

    from chunked_fnet.device import stack_line
    from chunked_fnet.predict import job as job_module

    cpu = torch.device("cpu")
    line = stack_line(cpu)
    assert line == f"chunked_fnet on cpu: torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
    monkeypatch.setattr(job_module, "_STACK_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="distributed.worker.chunked_fnet"):
        job_module.log_stack_once(cpu)
        job_module.log_stack_once(cpu)
    assert [r.getMessage() for r in caplog.records if r.name == "distributed.worker.chunked_fnet"] == [line]


@pytest.mark.parametrize(("name", "visible", "worker", "refused"), [
    ("cuda:1", "1,2,3,0", "tcp://127.0.0.1:4000", "so cuda:1 would be GPU 2, another worker's"),  # dask-cuda's worker 1 of 4
    ("cuda:3", "2", "tcp://127.0.0.1:4000", "so cuda:3 would be GPU none, another worker's"),
    ("cuda:0", "1,2,3,0", "tcp://127.0.0.1:4000", None),  # the worker's own
    ("cuda", "1,2,3,0", "tcp://127.0.0.1:4000", None),
    ("cuda:1", None, "tcp://127.0.0.1:4000", None),  # no pinning: every worker on the same GPU 1, as asked
    ("cuda:1", "1,2,3,0", None, None),  # not a dask worker: the user's own numbering
    ("cpu", "1,2,3,0", "tcp://127.0.0.1:4000", None),
])
def test_an_explicit_gpu_index_on_a_pinned_dask_worker_is_refused(name: str, visible: str | None, worker: str | None, refused: str | None) -> None:
    from chunked_fnet.device import refuse_another_workers_gpu
    from chunked_fnet.errors import InputError

    device = torch.device(name)
    if refused is None:
        refuse_another_workers_gpu(name, device, visible, worker)
        return
    with pytest.raises(InputError) as caught:
        refuse_another_workers_gpu(name, device, visible, worker)
    text = str(caught.value)
    assert refused in text and f"CUDA_VISIBLE_DEVICES={visible}" in text and "use device 'cuda'" in text and "\n" not in text


def test_resolve_device_outside_a_worker_keeps_its_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a dask worker CUDA_VISIBLE_DEVICES changes nothing (on this machine without CUDA: no GPU)."""
    from chunked_fnet.errors import InputError
    from chunked_fnet.device import resolve_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(InputError, match="sees no cuda device here"):
        resolve_device("cuda:1")


def test_resolve_device_in_a_pinned_dask_worker_refuses_a_neighbours_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a real dask worker (in this process) pinned by CUDA_VISIBLE_DEVICES, ``cuda:1`` is refused
    before torch is asked about GPUs; ``cpu`` still resolves."""
    from distributed import Client, LocalCluster

    from chunked_fnet.device import resolve_device
    from chunked_fnet.errors import InputError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2,3,0")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with pytest.raises(InputError, match=r"^device 'cuda:1' on dask worker .*so cuda:1 would be GPU 2, another worker's"):
            client.submit(resolve_device, "cuda:1", pure=False).result()
        assert client.submit(resolve_device, "cpu", pure=False).result() == torch.device("cpu")


def test_out_of_memory_stops_a_dask_run_at_once_in_one_line(blocks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``predict`` on a real (in-process) dask cluster: the first out-of-memory block stops the
    run without retries, and its one line names a patch that fits."""
    from distributed import Client, LocalCluster

    from chunked_fnet.predict import predict
    from chunked_fnet.predict.submit import RunStoppedError

    calls: list[int] = []

    def exhausted(self, x):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(NormAndDropout, "forward", exhausted)
    options = OPTIONS.model_copy(update={"retries": 2})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with pytest.raises(RunStoppedError) as caught:
            predict(tmp_path / "in.zarr", [tmp_path / "dna.ckpt"], tmp_path / "oom.zarr", options=options, client=client, progress=False)
    text = str(caught.value)
    assert "stopped at a failure no retry can fix" in text and "DeviceMemoryError: out of memory on cpu (host memory, " in text
    assert "running patch [8, 16, 16] x " in text and "rerun with patch_shape [" in text and "\n" not in text
    blocks_total = len(blocks[2])
    assert 1 <= len(calls) < blocks_total * (1 + options.retries)  # stopped at once, not every block tried 3 times


def test_workers_sharing_one_gpu_each_budget_their_share_and_are_named() -> None:
    """Several dask workers started without dask-cuda all compute on GPU 0: each gets its share of that
    GPU's memory (not the whole, three times over), they count as one GPU, and a warning names them.
    Workers on GPUs of their own (dask-cuda) keep a whole GPU each. (The workers' facts are injected:
    no GPU here; on one they come from ``_device_facts``.)"""
    from chunked_fnet.predict.prepare import gpu_shares

    gib = 2**30
    workers = {f"tcp://127.0.0.1:{p}": {"host": "127.0.0.1"} for p in (1, 2, 3)} | {"tcp://10.0.0.2:1": {"host": "10.0.0.2"}}

    def fact(gpu: str, memory: int = 80 * gib) -> dict:
        return {"type": "cuda", "memory": memory, "gpu": gpu}

    crowded = {"tcp://127.0.0.1:1": fact("GPU-aaa"), "tcp://127.0.0.1:2": fact("GPU-aaa"), "tcp://127.0.0.1:3": fact("GPU-aaa"),
               "tcp://10.0.0.2:1": fact("GPU-aaa")}  # the same id on another host is another GPU
    with pytest.warns(RuntimeWarning, match=r"3 dask workers on host 127\.0\.0\.1 compute on one GPU \(GPU-aaa\).*1/3 of its memory.*dask-cuda") as record:
        memory, gpus = gpu_shares(workers, crowded)
    assert len(record) == 1 and "tcp://127.0.0.1:1, tcp://127.0.0.1:2, tcp://127.0.0.1:3" in str(record[0].message)
    assert (memory, gpus) == (80 * gib // 3, 2)

    own = {f"tcp://127.0.0.1:{p}": fact(f"GPU-{p}", (40 + p) * gib) for p in (1, 2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gpu_shares(workers, own) == (41 * gib, 3)
    assert gpu_shares(workers, {"tcp://127.0.0.1:1": {"type": "cpu", "memory": 0, "gpu": None}}) == (0, 0)


def test_explicit_bf16_where_it_is_emulated_warns_once_and_auto_avoids_it() -> None:
    """bf16 asked on workers that lack it (a CPU without AMX or AVX512-BF16) runs as asked, with one line
    saying why it will be slow; native bf16 asked, fp32 asked, or no worker up yet: no warning; ``auto``
    there computes fp32 and says why."""
    import warnings

    from chunked_fnet.predict.policy import ModelConstraints, resolve_policy

    def policy(precision: str, **hardware: object):
        return resolve_policy(PredictOptions(precision=precision), (32, 128, 128), ModelConstraints(), Hardware(**hardware))

    with pytest.warns(RuntimeWarning, match=r"^precision bf16 as asked, though not every cpu worker computes bf16 natively "
                                            r"\(a CPU needs AMX or AVX512-BF16; .*\); precision fp32 or auto avoids it$") as seen:
        emulated = policy("bf16", device="cpu", native_bf16=False)
    assert emulated.precision == "bf16" and emulated.reason == "explicit"
    assert len(seen) == 1 and "\n" not in str(seen[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert policy("bf16", device="cpu", native_bf16=True).precision == "bf16"
        assert policy("bf16", device="unknown").precision == "bf16"  # nothing known to warn of
        assert policy("fp32", device="cpu", native_bf16=False).precision == "fp32"
        auto = policy("auto", device="cpu", native_bf16=False)
    assert auto.precision == "fp32" and auto.reason == "auto: not every cpu worker computes bf16 natively"
