"""Submit a run's tasks to dask and follow them: a batch of whole frames at a time, one progress bar,
failures gathered and reported together, a lost or stalled cluster ended in one line with the
``--resume`` hint; then the pyramids and one summary per job.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, as_completed
from tqdm.auto import tqdm

from chunked_fnet.errors import ChunkedFnetError, retryable
from chunked_fnet.io.store import redact
from chunked_fnet.io.writer import build_pyramid
from chunked_fnet.predict.frame_stats import frame_chunks, frame_stats_task
from chunked_fnet.predict.job import PredictJob, block_input_chunks, predict_block, read_input_chunk, write_chunk
from chunked_fnet.predict.ledger import Ledger, chunk_key, describe_chunk
from chunked_fnet.predict.policy import RunPolicy
from chunked_fnet.predict.schedule import ChunkTask
from chunked_fnet.predict.shipping import JobRef, shipped
from chunked_fnet.profiling import add_stages

__all__ = ["ChunksFailedError", "RunInterruptedError", "RunStoppedError", "RunSummary", "execute", "execute_many"]


class ChunksFailedError(ChunkedFnetError, RuntimeError):
    """Some chunk tasks failed after their retries; every other chunk was written and recorded."""


class RunStoppedError(ChunksFailedError):
    """A chunk failed in a way no retry can fix (a full disk, a read-only output, a damaged input chunk,
    see :func:`~chunked_fnet.errors.retryable`): the run stopped at once, what was finished is recorded."""


@dataclass(frozen=True)
class RunSummary:
    output: str
    chunks: int  # computed by this run
    workers: int
    seconds: float
    voxels: int
    total_chunks: int = 0  # of the whole output; more than ``chunks`` when a resumed run skipped finished ones
    patch_evaluations: int = 0  # model patches evaluated (each global sliding-window patch of a frame once, bar background)
    policy: RunPolicy | None = None  # what the run chose: window, precision (and why), recompute factor
    shards: tuple[int, ...] | None = None  # z, y, x of the output's shards: a chunk task writes one whole (None: a chunk)
    background_patches: int = 0  # patches skipped as background (policy.skip_empty), by this run's block tasks
    background_blocks: int = 0  # block tasks all of whose patches were background: the models never ran for them
    stages: dict[str, tuple[float, float]] | None = None  # with options.profile: (CPU s, wall s) by stage, summed over this run's tasks

    @property
    def precision(self) -> str:
        """What the models computed in, and why (``bf16 (auto: bf16 is native on every cpu worker)``)."""
        return f"{self.policy.precision} ({self.policy.reason})" if self.policy else ""

    @property
    def recompute(self) -> float:
        """Model-voxel evaluations per output voxel (1.0: every voxel evaluated once)."""
        return self.policy.recompute if self.policy else float("nan")

    def __str__(self) -> str:
        rate = self.voxels / self.seconds if self.seconds else float("nan")
        skipped = self.total_chunks - self.chunks
        resumed = f" ({skipped} of {self.total_chunks} were already done)" if skipped > 0 else ""
        sharded = f", each writing whole shards of {'x'.join(map(str, self.shards))}" if self.shards else ""
        return (
            f"wrote {self.output}: {self.chunks} chunk tasks on {self.workers} worker(s) in {self.seconds:.1f} s{resumed}{sharded}, "
            f"{self.voxels / 1e6:.2f} M output voxels x structures, {rate / 1e6:.3f} M voxels/s, {self.patch_evaluations} patches evaluated"
            + (f" of {'x'.join(map(str, self.policy.window.patch_shape))} (each voxel evaluated {self.recompute:.2f}x)"
               f"; {self.precision}" if self.policy else "")
            + (f"; {self.background_patches} background patches skipped (level {self.policy.skip_empty:g}), "
               f"{self.background_blocks} block tasks without a model call" if self.policy and self.policy.skip_empty is not None else "")
            + (f"\n{describe_stages(self.stages)}" if self.stages else "")
        )


#: Chunk tasks handed to the scheduler at a time: a run of any length is submitted a batch of whole
#: frames at a time, topped up as chunks finish. One graph of every chunk cost time superlinear in
#: its size before the first chunk ran (benchmarks/many_chunks.py, 2-core CPU: 10^3 chunks submitted
#: in 1.6 s, 10^4 in 36 s, the first chunk finished after 65 s), and held every task in the scheduler.
BATCH_CHUNKS = 1024


class FrameBatches:
    """Hands a job's tasks to the scheduler a batch of frames at a time (frames are independent:
    a chunk only needs the blocks of its own frame), in storage order. With ``policy.shared_reads`` a block
    task takes its input chunks from read tasks, one per input chunk of the batch's blocks: each read once."""

    def __init__(self, job: PredictJob, graph: Any, client: Client, ref: JobRef, batch: int | None = None, policy: RunPolicy | None = None) -> None:
        self.job, self.graph, self.client, self.batch = job, graph, client, batch or BATCH_CHUNKS
        self.policy = policy
        self.ref = ref  # what the tasks carry instead of the job (see predict/shipping.py)
        self.low_water = max(1, self.batch // 2)
        self.token = uuid.uuid4().hex[:8]  # two runs on one cluster must never share a task key
        self.chunks_of: dict[int, list[int]] = {}
        for i, c in enumerate(graph.chunks):
            self.chunks_of.setdefault(c.time_index, []).append(i)
        self.frames = sorted(self.chunks_of)
        self.next = 0
        self.retries = 0  # submitted so far

    @property
    def done(self) -> bool:
        return self.next >= len(self.frames)

    def more(self) -> dict[Any, Any]:
        """Futures (-> their ChunkTask) of the next frames: at least one frame, up to ``batch`` chunks."""
        frames: list[int] = []
        count = 0
        while not self.done and (not frames or count + len(self.chunks_of[self.frames[self.next]]) <= self.batch):
            frames.append(self.frames[self.next])
            count += len(self.chunks_of[self.frames[self.next]])
            self.next += 1
        return self.submit([self.graph.chunks[i] for t in frames for i in self.chunks_of[t]])

    def submit(self, tasks: Sequence[ChunkTask], retry: bool = False) -> dict[Any, ChunkTask]:
        """Futures (-> their ChunkTask) of ``tasks`` and the blocks they read; each retry gets keys of its
        own, so that it recomputes its blocks instead of meeting erred ones still held by the scheduler."""
        graph, job = self.graph, self.ref
        self.retries += retry
        token = f"{self.token}r{self.retries}" if retry else self.token
        reads: dict[tuple[int, tuple[int, ...]], Any] = {}
        frame_stats: dict[int, Any] = {}

        def read(t: int, chunk: tuple[int, ...]) -> Any:
            if (t, chunk) not in reads:
                reads[(t, chunk)] = dask.delayed(read_input_chunk, pure=False)(
                    job, t, chunk, dask_key_name=f"cfnet-read-{token}-t{t}-{'.'.join(map(str, chunk))}",
                )
            return reads[(t, chunk)]

        def inputs(block: int) -> list[Any]:
            """The read tasks of ``block``'s input chunks (none: the block task reads its box itself)."""
            if self.policy is None or not self.policy.shared_reads:
                return []
            task = graph.blocks[block]
            return [read(task.time_index, chunk) for chunk in block_input_chunks(self.job, self.policy.window, task)]

        def stats(block: int) -> Any:
            """The statistics task of ``block``'s frame, where the tasks compute them and its chunks are shared
            (predict/frame_stats.py; None: the job has them, or the block task reads its whole frame itself)."""
            t = graph.blocks[block].time_index
            if self.policy is None or not self.policy.shared_reads or self.job.stats[t - self.job.time_offset] is not None:
                return None
            if t not in frame_stats:
                frame_stats[t] = dask.delayed(frame_stats_task, pure=False)(
                    job, t, *(read(t, chunk) for chunk in frame_chunks(self.job)), dask_key_name=f"cfnet-stats-{token}-t{t}",
                )
            return frame_stats[t]

        def lone(block: int) -> bool:  # a block task with one piece returns it as itself (job.block_result)
            return len(graph.blocks[block].pieces) == 1

        blocks = {
            ref.block: dask.delayed(predict_block, pure=False, nout=None if lone(ref.block) else len(graph.blocks[ref.block].pieces))(
                job, graph.blocks[ref.block], *inputs(ref.block), stats=stats(ref.block),
                dask_key_name=f"cfnet-block-{token}-{chunk_key(graph.blocks[ref.block].time_index, graph.blocks[ref.block].block)}",
            )
            for c in tasks for ref in c.sources
        }

        def piece(ref: Any) -> Any:
            return blocks[ref.block] if lone(ref.block) else blocks[ref.block][ref.piece]

        chunks = [
            dask.delayed(write_chunk, pure=False)(
                job, c, *(piece(ref) for ref in c.sources),
                dask_key_name=f"cfnet-chunk-{token}-{chunk_key(c.time_index, c.region)}",
            )
            for c in tasks
        ]
        # retries=0, and _run_tasks submits a retryable failure again itself: dask's own retries retry
        # any exception (the scheduler retries an erred task while it has retries left, whatever it raised),
        # a full disk too, and Client.retry cannot retry a chunk whose block erred (it looks for a future
        # of the block, which the client never held). A retry recomputes the chunk's blocks: rare, and cheap.
        # One computation per frame, the earlier frame first (priority -t): dask.order runs the independent
        # frames of one graph last first, so a live viewer, a progress bar and an interrupted run's output
        # would see frames finish backwards. Frames share no task, so the split changes nothing else.
        by_frame: dict[int, list[int]] = {}
        for i, c in enumerate(tasks):
            by_frame.setdefault(c.time_index, []).append(i)
        futures: list[Any] = [None] * len(tasks)
        for t, members in by_frame.items():
            for i, future in zip(members, self.client.compute([chunks[i] for i in members], retries=0, priority=-t), strict=True):
                futures[i] = future
        return dict(zip(futures, tasks, strict=True))


class RunInterruptedError(ChunkedFnetError, RuntimeError):
    """The cluster went away mid-run (scheduler lost, run cancelled); finished chunks are recorded."""


def _interrupted(job: PredictJob | Sequence[PredictJob], client: Client, what: str, lost: bool = True, output: str | None = None) -> RunInterruptedError:
    jobs = [job] if isinstance(job, PredictJob) else list(job)
    address = getattr(client.scheduler, "address", None) or "the dask scheduler"
    done = sum(len(Ledger(j.output_path).done()) for j in jobs)
    total = sum(j.n_chunks for j in jobs)
    happened = f"lost its dask scheduler {address}" if lost else f"stopped on the dask scheduler {address}"
    return RunInterruptedError(
        f"the run into {redact(output or jobs[0].output_path)} {happened} ({redact(what)}); {done} of {total} chunks are written "
        f"and recorded: rerun the same command with --resume (against a running scheduler) to compute only the rest"
    )


def _stopped(jobs: Sequence[PredictJob], failure: str, output: str) -> RunStoppedError:
    done = sum(len(Ledger(j.output_path).done()) for j in jobs)
    total = sum(j.n_chunks for j in jobs)
    return RunStoppedError(
        f"the run into {redact(output)} stopped at a failure no retry can fix ({failure}); {done} of {total} chunks are written "
        f"and recorded: --resume computes the rest once the cause is fixed"
    )


#: Worker task states of a task whose function is running (``cancelled``: cancelled while it ran;
#: its function cannot be interrupted and goes on to write its chunk).
RUNNING = frozenset({"executing", "long-running", "cancelled", "resumed"})
# A worker's task in one of these states may still start or go on running its function: "ready" ones too,
# since a worker can start a queued task before the scheduler's word that it was released reaches it.
MAY_RUN = RUNNING | {"waiting", "ready", "constrained"}
SCHEDULED = frozenset({"waiting", "queued", "processing", "no-worker"})  # the scheduler's, likewise


def _running_keys(tokens: Sequence[str], dask_worker: Any = None) -> list[str]:
    """On a worker (``Client.run``): the keys of the run's tasks that may still run their function."""
    return [
        str(key) for key, ts in dask_worker.state.tasks.items()
        if ts.state in MAY_RUN and any(f"-{token}" in str(key) for token in tokens)
    ]


def _scheduled_keys(tokens: Sequence[str], dask_scheduler: Any = None) -> list[str]:
    """On the scheduler (``Client.run_on_scheduler``): the keys of the run's tasks it may still send to a worker."""
    return [
        str(key) for key, ts in dask_scheduler.tasks.items()
        if ts.state in SCHEDULED and any(f"-{token}" in str(key) for token in tokens)
    ]


def _let_running_tasks_end(client: Client, tokens: Sequence[str], timeout: float) -> None:
    """Wait (up to ``timeout``) until no task of the run is running, or may still start, anywhere.

    Cancelling a task, or releasing the last future that wants it, only forgets it: a chunk task already
    running goes on and writes its chunk and ledger marker, and a block of a chunk that failed goes on
    after its chunk has. A run that counted its chunks, or gave up its output's claim or its job's worker
    plugin, before they ended would report a count the ledger then contradicts, could let another run
    start writing beside them, and would leave tasks failing on workers after it returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            scheduled = client.run_on_scheduler(_scheduled_keys, list(tokens))
            running = client.run(_running_keys, list(tokens), on_error="return")
        except (OSError, TimeoutError):  # the cluster is going away: nothing more to wait for
            return
        if not scheduled and not any(isinstance(keys, list) and keys for keys in running.values()):
            return
        time.sleep(0.05)


def execute(job: PredictJob, policy: RunPolicy, client: Client, *, skip: Collection[str] = (), progress: bool = True) -> RunSummary:
    """Run the tasks of a planned job whose output exists (see :func:`~chunked_fnet.predict.prepare.create_output`).

    Chunks named in ``skip`` (their ledger keys) are not computed. A chunk that still fails after
    ``options.retries`` retries does not stop the others: once every task has ended, the failures are
    raised together, naming each chunk, while everything else stays written and recorded. A failure
    that no retry can fix (:func:`~chunked_fnet.errors.retryable`) stops the run at once instead
    (:class:`RunStoppedError`): the other tasks are cancelled, and what was finished stays recorded.

    The graph (:meth:`PredictJob.schedule`) goes to dask a batch of whole frames at a time
    (:class:`FrameBatches`): ``dask.order`` runs each chunk as soon as its blocks are done, so blocks'
    sums are held only along a moving front and memory stays bounded however many frames and chunks there are.
    """
    return execute_many([job], [policy], client, skips=[skip], progress=progress)[0]


def execute_many(
    jobs: Sequence[PredictJob],
    policies: Sequence[RunPolicy],
    client: Client,
    *,
    skips: Sequence[Collection[str]] | None = None,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    output: str | None = None,
) -> list[RunSummary]:
    """Run several planned jobs (e.g. the fields of a plate) as one run: one progress bar, their tasks
    handed to the scheduler job after job, a batch of whole frames at a time, and one error at the end
    naming every chunk that failed (prefixed with its job's label). Returns one summary per job."""
    start = time.perf_counter()
    skips = list(skips) if skips is not None else [()] * len(jobs)
    labels = [f"{label} " for label in labels] if labels is not None else [""] * len(jobs)
    graphs = [job.schedule(policy.window, set(skip)) for job, policy, skip in zip(jobs, policies, skips, strict=True)]
    with shipped(client, list(zip(jobs, policies, strict=True))) as refs:  # the jobs stay on the workers only while their tasks run
        workers, voxels = _run_tasks(jobs, graphs, refs, client, progress, labels, output, policies)
    for job in jobs:
        if job.options.levels > 1:
            build_pyramid(job.output_path, progress=progress, times=(job.time_offset, job.time_offset + len(job.times)))
    seconds = time.perf_counter() - start
    summaries = []
    for j, (job, policy, graph) in enumerate(zip(jobs, policies, graphs, strict=True)):
        background, whole = _background(job, policy, graph)
        summaries.append(RunSummary(
            job.output_path, len(graph.chunks), workers, seconds, voxels[j], total_chunks=job.n_chunks,
            patch_evaluations=graph.patch_evaluations - background, policy=policy, shards=job.shards,
            background_patches=background, background_blocks=whole, stages=_stages(job, graph) if job.options.profile else None,
        ))
    return summaries


def _stages(job: PredictJob, graph: Any) -> dict[str, tuple[float, float]]:
    """This run's tasks' time by stage, from their records in the ledger (a resumed run: the tasks it ran itself)."""
    ledger = Ledger(job.output_path)
    total: dict[str, list[float]] = {}
    for record in [*ledger.blocks({chunk_key(b.time_index, b.block) for b in graph.blocks}),
                   *ledger.chunks({chunk_key(c.time_index, c.region) for c in graph.chunks})]:
        add_stages(total, record.get("stages", {}))
    return {name: (cpu, wall) for name, (cpu, wall) in total.items()}


def describe_stages(stages: dict[str, tuple[float, float]]) -> str:
    """One line: the tasks' CPU and wall seconds by stage, largest CPU first; ``task`` is what no named stage took."""
    shown = sorted(stages.items(), key=lambda kv: -kv[1][0])
    return "time by stage, all tasks (CPU s / wall s): " + ", ".join(f"{k} {c:.2f}/{w:.2f}" for k, (c, w) in shown)


def _background(job: PredictJob, policy: RunPolicy, graph: Any) -> tuple[int, int]:
    """The patches this run skipped as background, and its block tasks that skipped all of theirs, from
    the blocks' records in the ledger (a resumed run counts the blocks it computed itself)."""
    if policy.skip_empty is None:
        return 0, 0
    records = Ledger(job.output_path).blocks({chunk_key(b.time_index, b.block) for b in graph.blocks})
    return sum(r["background"] for r in records), sum(r["background"] == r["patches"] for r in records)


def _run_tasks(
    jobs: Sequence[PredictJob], graphs: Sequence[Any], refs: Sequence[JobRef], client: Client, progress: bool, labels: Sequence[str],
    output: str | None, policies: Sequence[RunPolicy] | None = None,
) -> tuple[int, list[int]]:
    """Submit the jobs' tasks a batch at a time and wait for them; returns the workers at the end and
    the output voxels written per job. Failures and a lost cluster are raised as :func:`execute_many` says."""
    policies = list(policies) if policies is not None else [None] * len(jobs)
    submitters = [FrameBatches(job, graph, client, ref, policy=policy) for job, graph, ref, policy in zip(jobs, graphs, refs, policies, strict=True)]
    low_water = submitters[0].low_water if submitters else 1
    current = 0
    futures: dict[Any, tuple[int, Any, int]] = {}  # -> job, ChunkTask, its try (0: the first)

    def top_up() -> dict[Any, tuple[int, Any, int]]:
        nonlocal current
        new: dict[Any, tuple[int, Any, int]] = {}
        while current < len(submitters) and (not new or len(futures) + len(new) < low_water):
            if submitters[current].done:
                current += 1
                continue
            new.update({f: (current, task, 0) for f, task in submitters[current].more().items()})
        return new

    def all_submitted() -> bool:
        return all(s.done for s in submitters)

    futures.update(top_up())
    voxels = [0] * len(jobs)
    failures: list[tuple[tuple[Any, ...], str]] = []
    cancelled = 0
    computed = sum(len(g.chunks) for g in graphs)
    stall = min(job.options.stall_timeout for job in jobs)
    where = output or jobs[0].output_path
    try:
        with tqdm(total=computed, desc="predict", unit="chunk", disable=not progress) as bar:
            # Finished chunks are never gathered, and their futures are released at once: a chunk's
            # result (a few timings) would otherwise live on its worker, and a worker lost later would
            # make dask recompute a finished chunk whose block inputs it had already forgotten, which
            # could wait forever ("Couldn't gather 1 keys, rescheduling"). The chunk's ledger marker
            # is its result. Polling (not a blocking iterator) bounds the wait for the next chunk.
            pending = as_completed(futures)
            last = time.monotonic()
            while not (pending.is_empty() and all_submitted()):
                if len(futures) < low_water and not all_submitted():
                    new = top_up()
                    futures.update(new)
                    pending.update(new)
                finished = pending.next_batch(block=False)
                if not finished:
                    if time.monotonic() - last > stall:
                        raise _interrupted(jobs, client, f"no chunk finished in {stall:g} s (stall_timeout)", lost=False, output=where)
                    time.sleep(0.05)
                    continue
                last = time.monotonic()
                for future in finished:
                    j, task, attempt = futures.pop(future)
                    job = jobs[j]
                    if future.status == "error":
                        ti, region = task.time_index, task.region
                        exc = future.exception()
                        text = f"{labels[j]}{describe_chunk(ti, region, job.times[ti - job.time_offset])}: {type(exc).__name__}: {redact(str(exc))}"
                        if not retryable(exc):
                            client.cancel(list(futures))
                            _let_running_tasks_end(client, [s.token for s in submitters], stall)
                            raise _stopped(jobs, text, where)
                        if attempt < job.options.retries:
                            again = {f: (j, t, attempt + 1) for f, t in submitters[j].submit([task], retry=True).items()}
                            futures.update(again)
                            pending.update(again)
                            future.release()
                            continue
                        failures.append(((j, ti, *region.start), text))
                    elif future.status == "cancelled":  # the scheduler was lost, or someone cancelled the run
                        cancelled += 1
                    else:
                        voxels[j] += task.region.size * len(job.models)
                    future.release()
                    bar.update(1)
        # the blocks of a chunk that failed (and of a retried one) may still run: the run ends with them
        _let_running_tasks_end(client, [s.token for s in submitters], stall)
        workers = len(client.scheduler_info().get("workers", {}))
    except (OSError, TimeoutError, asyncio.CancelledError) as exc:  # the connection itself went away
        raise _interrupted(jobs, client, f"{type(exc).__name__}: {exc}", output=where) from None
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the run's tasks end with it, before its job leaves the workers
        if client.status == "running":
            client.cancel(list(futures))
        raise
    if cancelled:
        raise _interrupted(jobs, client, f"{cancelled} chunk tasks were cancelled", output=where)
    if failures:
        failures.sort()  # in storage order, whatever order they failed in
        retries = jobs[0].options.retries
        raise ChunksFailedError(
            f"{len(failures)} of {computed} chunks of {redact(where)} failed after {retries + 1} tries "
            f"(the other {computed - len(failures)} are written; --resume computes only what is missing once the cause is fixed): "
            + "; ".join(text for _, text in failures[:5]) + (f"; ... {len(failures) - 5} more" if len(failures) > 5 else "")
        )
    return workers, voxels


