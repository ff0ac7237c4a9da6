"""Prepare a run of planned jobs on a cluster: read the cluster's facts, restore an interrupted run's
record, resolve each job's policy (once per run), and create the outputs.

The order matters: every check that can refuse a run happens before anything is written, and an
output whose creation fails part way is removed again, so a rerun with the cause fixed starts clean.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distributed import Client

import chunked_fnet
from chunked_fnet.errors import ChunkedFnetError, InputError, one_line
from chunked_fnet.io.store import redact
from chunked_fnet.io.writer import create_image, open_for_writing
from chunked_fnet.model.summary import model_summary
from chunked_fnet.predict.frame_stats import same_input
from chunked_fnet.predict.job import PredictJob
from chunked_fnet.config import differences
from chunked_fnet.predict.ledger import Ledger
from chunked_fnet.predict.options import BEFORE_RECORDED
from chunked_fnet.predict.ownership import Claim, already_exists, clear_for_overwrite
from chunked_fnet.predict.policy import PATCH_MEMORY_FRACTION, Hardware, RunPolicy
from chunked_fnet.predict.precision_check import check_runs
from chunked_fnet.preprocess.normalize import FrameStats

__all__ = ["METHOD", "cluster_hardware", "create_output", "prepare", "provenance"]


def cluster_hardware(client: Client, device: str) -> Hardware:
    """The facts of the cluster's workers: the smallest patch budget (memory per task thread, or a GPU's
    total memory: one block at a time runs on a GPU, in its own thread), the patches that keep every GPU
    (or CPU host) busy, task threads per host, and whether every worker computes bf16 natively.

    CPU threads are not counted as patches: a frame is not cut to give each thread a patch, since the cut
    evaluates the overlap twice (one 48x384x384 frame in two: 1.25x), while a block given a host's idle
    threads runs its convolutions on all of them at the bare forward's own speed."""
    workers = client.scheduler_info().get("workers", {})
    if not workers:  # nothing to ask yet (batch-system workers still queued): what any worker can take
        return Hardware(device="unknown")
    per_host: dict[Any, int] = {}
    for w in workers.values():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w["nthreads"])
    shares = [w["memory_limit"] / max(1, w["nthreads"]) for w in workers.values() if w.get("memory_limit")]
    budget = PATCH_MEMORY_FRACTION * min(shares) if shares else Hardware().patch_budget
    facts = client.run(_device_facts, device)
    gpu_memory, n_gpus = gpu_shares(workers, facts)
    kind = "cuda" if n_gpus else "cpu"
    if n_gpus:
        budget = PATCH_MEMORY_FRACTION * gpu_memory
    native = all(f["native_bf16"] for f in facts.values())
    stacks = tuple(sorted({(f["torch"], f["cudnn"]) for f in facts.values() if f["type"] == "cuda"}, key=str))
    return Hardware(budget, n_gpus or len(per_host), tuple(per_host.values()), kind, native, stacks)


def gpu_shares(workers: Mapping[str, Mapping[str, Any]], facts: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """The smallest GPU memory one CUDA worker may count on, and how many distinct GPUs the workers use.

    Workers that compute on one GPU (the same host and GPU id: several ``dask worker`` processes started
    without dask-cuda all land on GPU 0) share its memory: each is given its share, not the whole, and
    a warning names them, since they also queue on one device while the others idle."""
    groups: dict[tuple[Any, str], list[str]] = {}
    memory: dict[tuple[Any, str], int] = {}
    for address, fact in facts.items():
        if fact["type"] != "cuda":
            continue
        key = (workers.get(address, {}).get("host"), str(fact.get("gpu") or address))
        groups.setdefault(key, []).append(address)
        memory[key] = int(fact["memory"])
    for (host, gpu), addresses in groups.items():
        if len(addresses) > 1:
            warnings.warn(one_line(
                f"{len(addresses)} dask workers on host {host} compute on one GPU ({gpu}): {', '.join(sorted(addresses))}; each is given "
                f"1/{len(addresses)} of its memory for patches and their blocks queue on that one device; start one worker per GPU "
                "(dask-cuda's LocalCUDACluster or dask-cuda-worker, or CUDA_VISIBLE_DEVICES per worker)"
            ), RuntimeWarning, stacklevel=3)
    shares = [memory[key] // len(addresses) for key, addresses in groups.items()]
    return (min(shares) if shares else 0), len(groups)


def _device_facts(device: str) -> dict[str, Any]:
    """On a worker: the device it computes on, its total memory (GPU), whether bf16 is native there, and
    its torch and cuDNN versions (known bf16 conv3d hazards: :func:`~chunked_fnet.predict.policy.bf16_conv3d_hazard`)."""
    import torch

    from chunked_fnet.device import bf16_is_native, resolve_device

    dev = resolve_device(device)
    props = torch.cuda.get_device_properties(dev) if dev.type == "cuda" else None
    memory = props.total_memory if props is not None else 0
    gpu = str(getattr(props, "uuid", "") or f"{props.name} #{dev.index or 0}") if props is not None else None  # the physical GPU
    cudnn = torch.backends.cudnn.version() if dev.type == "cuda" else None
    return {"type": dev.type, "memory": memory, "gpu": gpu, "native_bf16": bf16_is_native(dev), "torch": torch.__version__, "cudnn": cudnn}


def prepare(
    jobs: Sequence[PredictJob], client: Client, *, resume: bool, overwrite: bool,
) -> tuple[list[RunPolicy], list[set[str] | None]]:
    """Each job's policy and, on resume, the chunks its interrupted run finished (None: a new output).

    Refuses before anything is written: an existing output without ``overwrite`` or ``resume``; a resume
    of an output that is no prediction, or was started with other input, models or parameters. A job's
    policy is resolved once, from the cluster's facts, or on resume from its run record (the interrupted
    run's window and precision, whatever this cluster would choose). Last, a new output computed in a
    reduced precision has it checked against fp32 on one real patch (:mod:`~chunked_fnet.predict.precision_check`),
    refused outside the measured bound; a resume keeps its interrupted run's check."""
    hardware = cluster_hardware(client, jobs[0].options.device) if jobs else Hardware()
    policies, skips = [], []
    for job in jobs:
        recorded = Ledger(job.output_path).read_record() if resume else None
        policy = job.resolve_policy(hardware, recorded)
        skips.append(_finished_chunks(job, policy, recorded) if resume else None)
        if skips[-1] is None and not overwrite and Ledger(job.output_path).output_exists():
            raise already_exists(job.output_path)
        policies.append(policy)
    policies = check_runs(jobs, policies, client, hardware.device, [s is None for s in skips])
    return policies, skips


def _finished_chunks(job: PredictJob, policy: RunPolicy, recorded: dict[str, Any] | None) -> set[str] | None:
    """Chunks already done by an interrupted run into ``job.output_path``; None when there is no output yet.

    Refuses when the output is not a chunked_fnet prediction or was started with other input, models
    or parameters: finishing it with different settings would give an output no single run produces.
    """
    ledger = Ledger(job.output_path)
    if recorded is None:
        if not ledger.output_exists():
            return None  # nothing was started: a resume is a first run
        raise InputError(
            f"cannot resume {redact(job.output_path)}: it holds no run record (.chunked_fnet/run.json), so it was not "
            "started by chunked-fnet predict; choose another --out"
        )
    recorded = {**recorded, "options": {**BEFORE_RECORDED, **recorded.get("options", {})}}
    diff = differences(*_stats_where_both_have_them(recorded, job.record(policy)))
    if diff:
        raise InputError(
            f"cannot resume {redact(job.output_path)}: it was started with other settings; "
            + "; ".join(diff)
            + " (run again with the same input, models and parameters, or pass --overwrite to start over)"
        )
    return ledger.done()


def _stats_where_both_have_them(recorded: dict[str, Any], now: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two records with a frame's statistics compared only where both runs computed them in the client: where
    either left them to the tasks (None), those compare them with the recorded ones themselves (predict/frame_stats.py).
    Statistics of the same input (:func:`~chunked_fnet.predict.frame_stats.same_input`: an earlier version's last
    bits) compare equal; the resumed chunks are z-scored with the recomputed ones, at most 1e-11 apart."""
    old, new = list(recorded.get("frame_stats") or []), list(now.get("frame_stats") or [])
    if len(old) == len(new):
        both = [
            (None, None) if a is None or b is None else (a, a) if same_input(a, FrameStats(**b)) else (a, b)
            for a, b in zip(old, new, strict=True)
        ]
        recorded = {**recorded, "frame_stats": [a for a, _ in both]}
        now = {**now, "frame_stats": [b for _, b in both]}
    return recorded, now


def create_output(job: PredictJob, policy: RunPolicy, overwrite: bool = False) -> None:
    """The empty output image: a named, coloured channel per structure, overlaying the input; its
    provenance (models, window, precision) in the image's attributes; its run record."""
    create_image(
        job.output_path,
        shape=job.output_shape,
        dims=("t", "c", "z", "y", "x"),
        chunks=(1, 1, *job.options.chunks),
        shards=(1, 1, *job.shards) if job.shards else None,
        dtype=job.options.dtype,
        compression=job.options.compression,
        scale={"t": job.time_scale, **dict(zip(("z", "y", "x"), job.output_scale, strict=True))},
        translation=dict(zip(("t", "z", "y", "x"), job.origin, strict=True)),
        units={"t": job.time_unit},
        channel_names=list(job.structures),
        channel_colors=list(job.colors),
        display_ranges=[{"min": -10.0, "max": 10.0, "start": -1.0, "end": 4.0} for _ in job.structures],
        levels=job.options.levels,
        version=job.options.version,
        name=f"chunked_fnet prediction of {Path(job.input_path).name}",
        overwrite=overwrite,
    )
    group = open_for_writing(job.output_path)
    made = provenance(job, policy)
    attrs = group.attrs.asdict()
    ngff = attrs["ome"] if "ome" in attrs else attrs  # NGFF 0.5 nests its metadata under "ome"
    ngff["multiscales"][0]["metadata"] = {"method": METHOD, "version": chunked_fnet.__version__, "kwargs": made["options"]}
    group.attrs.update({**attrs, "chunked_fnet": made})
    Ledger(job.output_path).write_record(job.record(policy))


#: What made the image, as the NGFF multiscales ``metadata`` names it.
METHOD = "chunked_fnet.predict"


def provenance(job: PredictJob, policy: RunPolicy) -> dict[str, Any]:
    """What made the output, kept in the image's own attributes (``attrs["chunked_fnet"]``), so that a
    copy of the arrays by any zarr tool, or a viewer, still says it: the models (structure, sha256, card
    summary), the input and its selection, the window, blend, TTA flips and precision, and the version.
    (The run record beside it, ``.chunked_fnet/run.json``, is for ``--resume`` and is not a zarr node.)"""
    record = job.record(policy)
    return {
        "version": chunked_fnet.__version__,
        "method": METHOD,
        "models": {"structures": list(job.structures), "sha256": list(job.hashes),
                   "cards": [model_summary(p, h) for p, h in zip(job.models, job.hashes, strict=True)]},
        "input": {"path": redact(job.input_path), "series": job.series, "level": job.input_level, "channel": job.channel_index,
                  "offset_zyx": list(job.input_offset), "shape_zyx": list(job.grid.source_shape),
                  "time_points": [job.times[0], job.times[-1]] if job.times[0] is not None else None},
        "tta_flips": job.options.tta_flips,
        "options": record["options"],
        **policy.record(),
    }


def create_or_leave_nothing(job: PredictJob, policy: RunPolicy, claim: Claim) -> None:
    """Create the output; if that fails part way (disk full, permissions), remove what this run made, so
    the rerun with the cause fixed does not meet a half-made store that "already exists". It holds the
    output's ``claim``, so no other run has written there since."""
    try:
        create_output(job, policy)
    except BaseException as exc:
        ledger = Ledger(job.output_path)
        if ledger.output != claim.ledger.output:  # a plate's field: all of it this run's
            if ledger.fs.exists(ledger.output):
                ledger.fs.rm(ledger.output, recursive=True)
        else:
            clear_for_overwrite(job.output_path)  # and the claim goes too if this run made the folder
        if isinstance(exc, OSError):
            raise ChunkedFnetError(
                f"could not create the output {redact(job.output_path)}: {exc.strerror or exc}; nothing was left behind, "
                "rerun once the cause is fixed"
            ) from None
        raise
