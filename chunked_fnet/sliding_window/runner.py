"""Running the model on patches: the one place where torch meets the sliding window.

:class:`PatchRunner` holds the model (or ensemble) and how to run it (device, precision, memory
format, test-time flips, batch size); :meth:`PatchRunner.weighted_sums` evaluates a set of global
patches of a :class:`~chunked_fnet.sliding_window.window.SlidingWindow` and returns their weighted
sums over a box, ready to be added to other pieces and blended.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from chunked_fnet.errors import DeviceMemoryError, InputError, one_line
from chunked_fnet.profiling import in_this_scope, stage
from chunked_fnet.sliding_window.box import Box
from chunked_fnet.sliding_window.grid import Corner
from chunked_fnet.sliding_window.padding import Reader
from chunked_fnet.sliding_window.window import SlidingWindow, WeightedSum, overlap_slices

__all__ = ["FlipSpec", "ModelLike", "PatchRunner", "tta_flip_sets"]

ModelLike = torch.nn.Module | Callable[[torch.Tensor], Any]
FlipSpec = bool | Literal["all"] | Sequence[Sequence[int]]


def _as_tensor(data: np.ndarray, device: torch.device) -> torch.Tensor:
    """``data`` as a float32 tensor on ``device``: no copy for a float32 array on the CPU (views too).

    To a GPU it goes through page-locked memory, asynchronously: the copy engine moves it while the
    GPU still runs another task's patches (torch's pinned-memory cache keeps the staging buffer
    until the copy has finished, and reuses it for the next block of the same size)."""
    data = np.asarray(data, dtype=np.float32)
    if any(st < 0 for st in data.strides) or any(st % data.itemsize for st in data.strides):
        data = np.ascontiguousarray(data)
    with warnings.catch_warnings():  # a read-only input is only ever read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        host = torch.from_numpy(data)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


#: device -> (host-to-device stream, device-to-host stream): a block's input is copied in, and its sums
#: copied out, on streams of their own, so that the copy engines move them while the device thread's
#: default stream runs another block's forward passes; events order each copy against the compute
#: that needs it, and nothing waits for the whole device (no per-block ``synchronize``)
_COPY_STREAMS: dict[str, tuple[Any, Any]] = {}


def _copy_streams(device: torch.device) -> tuple[Any, Any]:
    with _EVAL_LOCK:
        streams = _COPY_STREAMS.get(str(device))
        if streams is None:
            streams = _COPY_STREAMS[str(device)] = (torch.cuda.Stream(device=device), torch.cuda.Stream(device=device))
        return streams


def _stage(data: np.ndarray, device: torch.device) -> tuple[torch.Tensor, Any]:
    """A block's input on ``device`` and, on CUDA, the event its copy records: the copy runs on the
    host-to-device stream, in the calling task thread, while the device computes another block."""
    if device.type != "cuda":
        return _as_tensor(data, device), None
    h2d, _ = _copy_streams(device)
    with torch.cuda.stream(h2d):
        x = _as_tensor(data, device)
        ready = torch.cuda.Event()
        ready.record(h2d)
    return x, ready


def _use_exact_cuda_math(fp32: bool) -> None:
    """cuDNN picks its fastest algorithm per patch shape (the window's patches all have one shape), and
    float32 means float32: torch lets cuDNN convolutions round to TF32 by default (~1e-3 relative),
    which would make a GPU's fp32 prediction differ from a CPU's. Process-wide torch flags, so set,
    not restored: a process runs one precision per job."""
    torch.backends.cudnn.benchmark = True
    if fp32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory: torch's ``OutOfMemoryError``, or a RuntimeError
    saying so (cuDNN's and older torch's allocation failures)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def tta_flip_sets(tta_flips: FlipSpec) -> list[tuple[int, ...]]:
    """The spatial-axis flips (0 = z, 1 = y, 2 = x) averaged by test-time augmentation.

    ``False``: none (just the input). ``True``: the input and its single flips along z, y and x
    (4 passes). ``"all"``: every combination (8 passes). Or an explicit list of axis tuples
    (``()`` is the unflipped input).
    """
    if tta_flips is False or tta_flips is None:
        return [()]
    if tta_flips is True:
        return [(), (0,), (1,), (2,)]
    if tta_flips == "all":
        return [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    flips = [tuple(int(a) for a in f) for f in tta_flips]  # type: ignore[union-attr]
    if not flips or any(a not in (0, 1, 2) for f in flips for a in f):
        raise InputError(f"tta_flips must be a bool, 'all' or a list of tuples of axes 0-2, got {tta_flips!r}")
    return flips


#: One thread per accelerator runs every forward pass on it. The task threads of a GPU worker read,
#: z-score and copy in their blocks, and blend and write their chunks, while this thread keeps the
#: device busy: kernels of several threads would queue on the device's one default stream anyway,
#: one block's activations are on the device at a time (the auto patch is sized for that), and
#: torch's cuDNN algorithm cache (``cudnn.benchmark``) is per thread: with a forward pass in every
#: task thread, each of them benchmarked every convolution again (measured on an H100: 8 task
#: threads made an fp32 run ~90x slower than its forward passes).
_DEVICE_THREADS: dict[str, ThreadPoolExecutor] = {}


def _device_thread(device: torch.device) -> ThreadPoolExecutor:
    with _EVAL_LOCK:
        executor = _DEVICE_THREADS.get(str(device))
        if executor is None:
            executor = _DEVICE_THREADS[str(device)] = ThreadPoolExecutor(1, thread_name_prefix=f"chunked_fnet-{device}")
        return executor


#: id(submodule) -> (sessions using it now, its own train flag before the first of them): counted per
#: submodule, not per top module, so that two wrappers sharing members (two blocks' ensembles) cannot
#: flip a member back to train mode while the other one's forward runs
_EVAL_USERS: dict[int, tuple[int, bool]] = {}
#: id(module) -> (sessions using it now, whether the first of them converted it to channels_last_3d)
_FORMAT_USERS: dict[int, tuple[int, bool]] = {}
_EVAL_LOCK = threading.Lock()


def _conv_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The first 5-D parameter (a 3-D convolution's weight) whose layout tells the memory formats
    apart (one with a single input channel is both), if any."""
    both = lambda p: p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last_3d)  # noqa: E731
    return next((p for p in module.parameters() if p.dim() == 5 and not both(p)), None)


def _in_channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()


def default_channels_last(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Whether activations (and weights) use ``channels_last_3d`` by default: the one rule, used by
    :class:`PatchRunner` and by whoever prepares a model for it once (the workers' cached ensembles).

    On the CPU, oneDNN's 3-D convolutions skip reordering every activation (the paper's U-Net, batch 4
    of 32x64x64: about 25 % less CPU time on an AVX-512 Xeon, benchmarks/run.py gpu device-path); on CUDA under
    bf16/fp16 autocast cuDNN's tensor-core kernels want it too (H100, a whole 64x512x512 frame in bf16:
    318 against 254 M voxels/s, BENCHMARKS.md, GPU acceptance); fp32 on CUDA stays NCDHW, not yet measured."""
    return device.type == "cpu" or (device.type == "cuda" and amp_dtype is not None)


def _on_device(t: torch.Tensor, device: torch.device) -> bool:
    """Whether ``t`` lives on ``device`` (``cuda`` means the current CUDA device, as ``.to`` takes it)."""
    if t.device.type != device.type:
        return False
    if device.type == "cuda" and device.index is None:
        return t.device.index == torch.cuda.current_device()
    return device.index is None or t.device.index == device.index


def inference_ready(module: torch.nn.Module, device: torch.device, channels_last: bool) -> bool:
    """Whether ``module`` can run as it is: every submodule in eval mode, every tensor on ``device``,
    and, if asked, its convolution weights in ``channels_last_3d``. Such a module (the workers' cached
    ensembles, prepared once by :func:`prepare_for_inference`) is never changed by a session, so any
    number of threads may run it at once."""
    if any(m.training for m in module.modules()):
        return False
    if not all(_on_device(t, device) for t in itertools.chain(module.parameters(), module.buffers())):
        return False
    weight = _conv_weight(module) if channels_last else None
    return weight is None or _in_channels_last(weight)


def prepare_for_inference(module: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``module`` on ``device``, in eval mode and (if asked) in ``channels_last_3d``, changed in place,
    once: for a module this process owns and shares between threads (a worker's cached model)."""
    module.to(device).eval()
    if channels_last and _conv_weight(module) is not None:
        module.to(memory_format=torch.channels_last_3d)
    return module


#: (id(weights), device) -> (a weak reference to the weight array, its copy on that device)
_DEVICE_WEIGHTS: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor]] = {}
_WEIGHTS_LOCK = threading.Lock()


def device_weights(weights: np.ndarray, device: torch.device) -> torch.Tensor:
    """A window's blending weights on ``device``, copied there once per process and kept while the
    array lives (a worker holds its run's window, whose arrays are cached per kind of position): every
    block of a run reuses them, where each used to upload its own (a whole-frame patch's all-ones
    weights, a frame's size, at every block). On the CPU they are the array itself, never copied."""
    if device.type == "cpu":
        return _as_tensor(weights, device)
    key = (id(weights), str(device))
    with _WEIGHTS_LOCK:
        hit = _DEVICE_WEIGHTS.get(key)
        if hit is not None and hit[0]() is weights:
            return hit[1]
        copy = _as_tensor(weights, device)

        def forget(ref: weakref.ref, key: tuple[int, str] = key) -> None:  # runs when the array is freed
            if _DEVICE_WEIGHTS.get(key, (None,))[0] is ref:
                _DEVICE_WEIGHTS.pop(key, None)

        _DEVICE_WEIGHTS[key] = (weakref.ref(weights, forget), copy)
        return copy


class PatchRunner:
    """Runs the model on patches: ``(N, C, pz, py, px)`` -> the averaged output, float32, ensemble
    members x flips, each un-flipped, summed in a fixed order on the device.

    - ``model``: a ``torch.nn.Module``, any callable ``(N, C, ...) tensor -> (N, C_out, ...)``, or a list
      of them (averaged), run in eval mode under ``torch.inference_mode``. A module already on
      ``device`` in eval mode and the memory format asked (:func:`prepare_for_inference`) is used as
      it is; any other is moved there and gets the caller's mode and memory format back afterwards.
    - ``tta_flips``: test-time flip augmentation (:func:`tta_flip_sets`).
    - ``amp_dtype``: e.g. ``torch.bfloat16`` to run the model under autocast.
    - ``channels_last``: ``torch.channels_last_3d`` activations; default on the CPU (about a quarter
      of the paper U-Net's time saved) and on CUDA under autocast (a fifth), where measured.
    - ``device_thread``: run the forward passes in the device's one thread (default on accelerators): on
      a CPU, the process's *compute lane*, one forward at a time on ``threads`` torch threads, while the
      callers' threads read, z-score, blend and write (a chunked run's CPU workers: ``RunPolicy.compute_lane``).
    - ``batch_size``: patches per forward pass.
    - ``threads``: torch threads of the device thread's forward passes on a CPU (default: as that thread has them).
    """

    def __init__(
        self,
        model: ModelLike | Sequence[ModelLike],
        device: str | torch.device = "cpu",
        tta_flips: FlipSpec = False,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool | None = None,
        batch_size: int = 4,
        device_thread: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not self.models:
            raise InputError("no model given (an empty ensemble)")
        for m in self.models:
            if not callable(m):
                raise InputError(f"model must be a torch.nn.Module or a callable, got {type(m).__name__}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.flips = [tuple(a + 2 for a in f) for f in tta_flip_sets(tta_flips)]
        self.amp_dtype = amp_dtype
        self.channels_last = default_channels_last(self.device, amp_dtype) if channels_last is None else bool(channels_last)
        # the forward passes in the device's own thread (see _DEVICE_THREADS): default on accelerators
        self.device_thread = self.device.type != "cpu" if device_thread is None else bool(device_thread)
        self.threads = None if threads is None or self.device.type != "cpu" else max(1, int(threads))

    def _in_device_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the device's one thread (on a CPU with ``threads`` torch threads: torch keeps the
        count per thread, so the callers' threads keep theirs), its exceptions raised here."""
        def run() -> Any:
            if self.threads is not None and torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            return fn(*args)

        return _device_thread(self.device).submit(in_this_scope(run)).result()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Modules on the device, in eval mode (and in ``channels_last_3d`` when asked), under inference
        mode. A module already so (:func:`inference_ready`: a worker's cached ensemble) is left alone:
        nothing is toggled or restored, whatever the threads. A caller's module that is not gets the
        caller's train/eval flags and memory format back when the last concurrent session using it ends
        (counted per submodule: dask runs several chunk tasks on one shared model in threads, and none
        may change it back mid-run)."""
        if self.device.type == "cuda":
            _use_exact_cuda_math(fp32=self.amp_dtype is None)
        with _EVAL_LOCK:  # one that another session borrowed looks ready, but is only lent: count this user too
            modules = [
                m for m in {id(m): m for m in self.models if isinstance(m, torch.nn.Module)}.values()
                if id(m) in _FORMAT_USERS or not inference_ready(m, self.device, self.channels_last)
            ]
            self._borrow(modules)
        try:
            with torch.inference_mode():
                yield
        finally:
            if modules:
                self._give_back(modules)

    def _borrow(self, modules: Sequence[torch.nn.Module]) -> None:
        """A caller's modules on the device, in eval mode and the asked memory format, counting the users
        (the caller holds ``_EVAL_LOCK``)."""
        for m in modules:
            count, converted = _FORMAT_USERS.get(id(m), (0, False))
            m.to(self.device)
            if count == 0 and self.channels_last:
                weight = _conv_weight(m)
                converted = weight is not None and not _in_channels_last(weight)
                if converted:
                    m.to(memory_format=torch.channels_last_3d)
            _FORMAT_USERS[id(m)] = (count + 1, converted)
            for sub in m.modules():
                users, training = _EVAL_USERS.get(id(sub), (0, sub.training))
                _EVAL_USERS[id(sub)] = (users + 1, training)
                sub.training = False

    def _give_back(self, modules: Sequence[torch.nn.Module]) -> None:
        """Each submodule's own train flag (and the module's memory format) back once its last user is done."""
        with _EVAL_LOCK:
            for m in modules:
                for sub in m.modules():
                    users, training = _EVAL_USERS.pop(id(sub))
                    if users > 1:
                        _EVAL_USERS[id(sub)] = (users - 1, training)
                    else:
                        sub.training = training
                count, converted = _FORMAT_USERS.pop(id(m))
                if count > 1:
                    _FORMAT_USERS[id(m)] = (count - 1, converted)
                elif converted:
                    m.to(memory_format=torch.contiguous_format)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        """A batch ``(N, C, pz, py, px)`` already on the device -> the averaged output, float32, on the device."""
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last_3d)
        total: torch.Tensor | None = None
        for model in self.models:
            for dims in self.flips:
                inp = torch.flip(xt, dims) if dims else xt
                with self._autocast():
                    out = model(inp)
                out = torch.as_tensor(out, device=self.device).float()
                if out.ndim != 5 or out.shape[0] != xt.shape[0] or tuple(out.shape[2:]) != tuple(xt.shape[2:]):
                    raise ValueError(
                        f"the model turned input {tuple(xt.shape)} into {tuple(out.shape)}; it must return "
                        f"(N, C_out, {', '.join(map(str, xt.shape[2:]))})"
                    )
                if dims:
                    out = torch.flip(out, dims)
                total = out if total is None else total + out
        assert total is not None
        n = len(self.models) * len(self.flips)
        if n > 1:
            total = total / n
        return total

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """The averaged output of a host batch ``(N, C, pz, py, px)``, float32 on the host: for a patch
        wanted whole rather than blended (the models' response to background, ``predict/background.py``)."""
        x = _as_tensor(batch, self.device)

        def run() -> torch.Tensor:
            with self.session():
                return self.forward(x).cpu()

        out = self._in_device_thread(run) if self.device_thread else run()
        return out.numpy()

    def _out_of_memory(self, patch: Sequence[int], batch: int) -> DeviceMemoryError:
        """The error a forward pass that ran out of device memory ends in: what ran, where (the device's
        memory is freed for the other threads first)."""
        from chunked_fnet.device import describe_device

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        error = DeviceMemoryError(one_line(
            f"out of memory on {describe_device(self.device)} running patch {list(patch)} x {batch} per forward pass"
        ))
        error.patch, error.batch, error.device = tuple(int(n) for n in patch), int(batch), str(self.device)
        return error

    def weighted_sums(self, window: SlidingWindow, read: Reader, corners: Sequence[Corner], target: Box) -> WeightedSum:
        """``sum_p w * f(patch p)`` of the patches ``corners`` over ``target`` (frame coordinates).

        The box holding the patches is read once and moved to the device once; patches are cut
        there and the sums stay there until complete (one copy in, one copy out), so a GPU never
        waits for per-batch copies or for blending on the CPU. With ``device_thread`` the reading
        and copying happen in the caller's thread and the forward passes in the device's thread.
        """
        if not corners:
            raise ValueError(f"no patches to evaluate for {target}")
        box = window.grid.bounding_box(corners)
        data = np.asarray(read(box.slices))
        if data.ndim != 4 or data.shape[1:] != box.shape:
            raise ValueError(f"the reader returned shape {data.shape} for {box}; expected (C, {', '.join(map(str, box.shape))})")
        with stage("staging"):
            x, ready = _stage(data, self.device)
        if self.device_thread:
            sums, done = self._in_device_thread(self._sums, window, x, box, corners, target, ready)
        else:
            sums, done = self._sums(window, x, box, corners, target, ready)
        if done is not None:  # this block's copy out, only: the device goes on with the next block meanwhile
            done.synchronize()
        return WeightedSum(target, sums.numpy() if self.device.type == "cpu" else np.array(sums))

    def _sums(
        self, window: SlidingWindow, x: torch.Tensor, box: Box, corners: Sequence[Corner], target: Box, ready: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        """The weighted sums on the host and, from a GPU, the event that says they have arrived (page-locked
        memory, copied on the device-to-host stream as soon as they are complete; the caller waits for it).
        ``ready``: the event of ``x``'s copy in, which the compute stream waits for."""
        with stage("blend"):  # the forward passes inside are their own stage
            return self._blend(window, x, box, corners, target, ready)

    def _blend(
        self, window: SlidingWindow, x: torch.Tensor, box: Box, corners: Sequence[Corner], target: Box, ready: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        grid = window.grid
        if ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(ready)
            x.record_stream(compute)  # x was allocated on the copy stream: not reused before compute is done with it
        with self.session():
            acc: torch.Tensor | None = None
            for i in range(0, len(corners), self.batch_size):
                batch = [grid.patch_box(c) for c in corners[i : i + self.batch_size]]
                cut = [x[(slice(None), *p.within(box))] for p in batch]
                try:  # a batch of one patch (a whole-frame patch) is a view of the input, not a copy of it
                    with stage("forward"):
                        pred = self.forward(cut[0].unsqueeze(0) if len(cut) == 1 else torch.stack(cut))
                except RuntimeError as exc:
                    if not is_out_of_memory(exc):
                        raise
                    raise self._out_of_memory(grid.patch, len(batch)) from exc
                if len(corners) == 1 and batch[0] == target and window.unit_weights(batch[0].start):  # the only batch
                    # the one patch is the whole target at weight 1: its output is the sum (0 + x is x; -0.0 reads +0.0
                    # there, equal in value), without filling and adding a target-sized array (~0.09 CPU-s per 64x512x512)
                    acc = pred[0].float().contiguous()  # (a channels_last output: copied once, as the sum would be)
                    break
                if acc is None:
                    acc = torch.zeros((pred.shape[1], *target.shape), dtype=torch.float32, device=self.device)
                elif pred.shape[1] != acc.shape[0]:
                    raise ValueError(f"the model changed its channel count from {acc.shape[0]} to {pred.shape[1]}")
                for patch, out in zip(batch, pred):
                    dst, src = overlap_slices(patch, target)
                    if window.unit_weights(patch.start):  # weight 1 everywhere (one patch along every axis): w * out is out
                        acc[(slice(None), *dst)] += out[(slice(None), *src)]
                        continue
                    w = device_weights(window.weights_for(patch.start), self.device)
                    acc[(slice(None), *dst)] += w[src] * out[(slice(None), *src)]
                del pred
            assert acc is not None
            if self.device.type != "cuda":
                return acc.cpu(), None
            _, d2h = _copy_streams(self.device)
            d2h.wait_stream(torch.cuda.current_stream(self.device))  # after the forward passes and blending queued so far
            host = torch.empty(acc.shape, dtype=acc.dtype, pin_memory=True)
            with torch.cuda.stream(d2h):
                host.copy_(acc, non_blocking=True)  # page-locked: at the bus's speed, not a pageable copy's
                acc.record_stream(d2h)
                done = torch.cuda.Event()
                done.record(d2h)
            return host, done
