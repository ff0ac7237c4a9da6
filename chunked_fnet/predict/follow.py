"""Follow a growing time-lapse: predict every frame already complete, then each new frame as soon as
the microscope has written it, appending it to the output's t axis (``predict --follow``).

*A frame is complete* when every stored chunk of the transmitted-light channel it reads exists: one
listing of the store per look, as the missing-chunk check reads it. zarr stores each chunk whole (a
local file is written beside its name and renamed; an object store's PUT is atomic), so a listed chunk
is a written one. That serves writers that grow the t axis frame by frame and writers that allocate
it ahead and fill it. *A writer says the acquisition has ended* by setting the image group's attribute
``"acquisition_complete": true`` (:data:`COMPLETE_ATTRIBUTE`); the follower then predicts what is
left and stops. It also stops after ``idle_timeout`` seconds without a new frame, and on Ctrl-C or
SIGTERM, everything written kept.

Each step is a batch run of the newly complete frames, on the same cluster, into the same output,
under the same claim (predict/ownership.py) and with the run's one policy: its chunks are written and
recorded as a batch run's are, so the finished output equals a batch prediction of the finished
time-lapse, and ``--follow --resume`` continues after a crash. The run record grows with the output
(each frame's statistics), written before the step's chunks.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client
from tqdm.auto import tqdm

from chunked_fnet.cluster import ClusterSpec
from chunked_fnet.errors import InputError, OmeZarrError, one_line
from chunked_fnet.io.completeness import complete_prefix, completeness
from chunked_fnet.io.reader import image_attributes, open_level_array
from chunked_fnet.io.store import redact
from chunked_fnet.io.writer import grow_time_axis
from chunked_fnet.predict.ensemble import Member, check_ensemble
from chunked_fnet.predict.job import PredictJob
from chunked_fnet.config import differences
from chunked_fnet.predict.ledger import Ledger
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.ownership import Claim
from chunked_fnet.predict.plan import more_frames, plan
from chunked_fnet.predict.policy import RunPolicy
from chunked_fnet.predict.precision_check import check_runs
from chunked_fnet.predict.prepare import cluster_hardware, create_or_leave_nothing
from chunked_fnet.predict.run import claimed_cluster, refuse_before_claim, start_writing
from chunked_fnet.predict.submit import BATCH_CHUNKS, execute_many
from chunked_fnet.preprocess.normalize import FrameStats

__all__ = ["COMPLETE_ATTRIBUTE", "FollowSummary", "follow"]

#: The image group's attribute by which the writer of a followed time-lapse says it wrote its last frame.
COMPLETE_ATTRIBUTE = "acquisition_complete"

#: Seconds between two looks at the input while it has no new frame (each look: one listing of the store;
#: a frame waits at most this long to be seen complete).
POLL_S = 0.5


@dataclass(frozen=True)
class FollowSummary:
    """What a followed run did: frames predicted, steps, each frame's latency and why it stopped."""

    output: str
    frames: int  # predicted by this run
    total_frames: int  # in the output when it stopped
    steps: int
    latencies: tuple[float, ...]  # per frame predicted: seconds from seeing it complete to its last chunk recorded
    stopped: str
    chunks: int = 0  # chunk tasks computed (a resumed follow skips those an interrupted one recorded)
    policy: RunPolicy | None = None

    def __str__(self) -> str:
        lag = (
            f"; from a frame seen complete to its prediction written: median {statistics.median(self.latencies):.2f} s, "
            f"max {max(self.latencies):.2f} s" if self.latencies else ""
        )
        return (f"followed into {self.output}: {self.frames} frame(s) predicted in {self.steps} step(s) ({self.chunks} chunk tasks), "
                f"{self.total_frames} in the output{lag}; stopped: {self.stopped}")


class InputWatch:
    """Looks at a growing input: its length in t, how many frames from ``start`` are complete, and
    whether its writer has marked it complete (one listing and two small reads a look)."""

    def __init__(self, job: PredictJob) -> None:
        self.job = job
        self.t_axis = job.input_dims.index("t")

    def regions(self, array: Any, start: int, stop: int) -> list[tuple[slice, ...]]:
        def region(t: int) -> tuple[slice, ...]:
            out = []
            for d in self.job.input_dims:
                if d == "t":
                    out.append(slice(t, t + 1))
                elif d == "c":
                    out.append(slice(self.job.channel_index, self.job.channel_index + 1))
                else:
                    a = "zyx".index(d)
                    out.append(slice(self.job.input_offset[a], self.job.input_offset[a] + self.job.grid.source_shape[a]))
            return tuple(out)

        return [region(t) for t in range(start, stop)]

    def look(self, start: int) -> tuple[int, int, bool]:
        """(frames in the store, complete frames from ``start`` on, marked complete)."""
        job = self.job
        marked = bool(image_attributes(job.input_path, series=job.series).get(COMPLETE_ATTRIBUTE, False))  # before the listing
        array = open_level_array(job.input_path, level=job.input_level, series=job.series)[0]
        length = int(array.shape[self.t_axis])
        return length, start + complete_prefix(array, self.regions(array, start, length)), marked

    def refuse_incomplete(self, start: int, length: int) -> None:
        """The writer has marked the input complete, yet frames lack chunks: with ``missing_chunks: fail``, say which."""
        array = open_level_array(self.job.input_path, level=self.job.input_level, series=self.job.series)[0]
        for t, region in enumerate(self.regions(array, start, length), start):
            report = completeness(array, region)
            if report.missing:
                raise InputError(
                    report.describe(f"{redact(self.job.input_path)} t={t}")
                    + f"; the writer marked the acquisition complete ({COMPLETE_ATTRIBUTE}), so they will not come: "
                    "pass --missing-chunks fill to predict them as the fill value"
                )


def follow(
    image: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    client: Client | ClusterSpec | None = None,
    series: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    idle_timeout: float | None = None,
    poll: float | None = None,
    progress: bool = True,
) -> FollowSummary:
    """Predict the time-lapse ``image`` (an OME-Zarr path or URL) while it is being written, frame by
    frame into ``out``, until its writer marks it complete, ``idle_timeout`` seconds pass without a
    new frame, or the process is stopped (KeyboardInterrupt: Ctrl-C, SIGTERM). ``resume`` continues
    an interrupted follow (or a finished batch run of all frames) into ``out``. ``poll``: seconds
    between looks while no frame is new (default :data:`POLL_S`)."""
    options = options or PredictOptions()
    poll = POLL_S if poll is None else poll
    if poll <= 0 or (idle_timeout is not None and idle_timeout <= 0):
        raise InputError(f"poll and idle_timeout are positive seconds; got poll {poll:g}, idle_timeout {idle_timeout}")
    if options.time is not None:
        raise InputError("--follow predicts every frame of the time-lapse as it arrives; a time range (--time) selects a fixed set: drop one")
    if not isinstance(image, (str, Path)):
        raise InputError("follow reads the input store again at each look: pass its path or URL, not a DataArray")
    source, target = str(image), str(out)
    refuse_before_claim(target, resume=resume, overwrite=overwrite)  # before any wait for the first frame
    members = check_ensemble([str(m) for m in models])[0]
    base = _first_frame(source, models, target, options, series, idle_timeout, poll)
    with claimed_cluster(target, client) as (claim, c):
        ledger = Ledger(target)
        recorded = ledger.read_record() if resume else None
        if resume and recorded is None and ledger.output_exists():
            raise InputError(f"cannot resume {redact(target)}: it holds no run record (.chunked_fnet/run.json); choose another --out")
        hardware = cluster_hardware(c, options.device)
        policy = base.resolve_policy(hardware, recorded)
        (policy,) = check_runs([base], [policy], c, hardware.device, [recorded is None])  # a new output: its precision checked first
        follower = _Follower(base, policy, members, c, InputWatch(base), claim, progress)
        if recorded is not None:
            follower.restore(recorded)
        start_writing(claim, target, resume=recorded is not None, overwrite=overwrite)
        return follower.run(idle_timeout, poll)


def _first_frame(
    source: str, models: Sequence[str | Path], target: str, options: PredictOptions, series: str | None,
    idle_timeout: float | None, poll: float,
) -> PredictJob:
    """The job of frame 0, planned (every check of a batch run) once it is complete: the follow's
    input, models, origin and options; later steps extend it. A follower may start before the
    acquisition: until the input is a readable image it waits, saying once what it waits for."""
    start, said = time.monotonic(), False
    while True:
        try:
            array, meta, where = open_level_array(source, series=series)
        except OmeZarrError as exc:
            if not said:
                print(f"chunked-fnet: waiting for {redact(source)} to be a readable OME-Zarr image (now: {one_line(str(exc))}); "
                      "Ctrl-C stops", file=sys.stderr, flush=True)
                said = True
        else:
            if "t" not in meta.dims:
                raise InputError(f"{where}: --follow follows a time-lapse; the image has no t axis (dims {list(meta.dims)})")
            if array.shape[meta.dims.index("t")] > 0:
                try:
                    job = plan(source, models, target, options.model_copy(update={"time": (0, 1)}), series=series)
                except InputError as exc:
                    if "stored chunks the prediction reads are missing" not in str(exc):
                        raise
                else:
                    if InputWatch(job).look(0)[1] > 0:  # with missing_chunks fill, planning alone would not wait for it
                        return job
        if idle_timeout is not None and time.monotonic() - start > idle_timeout:
            raise InputError(f"{redact(source)}: no complete frame in {idle_timeout:g} s (--idle-timeout); nothing was predicted")
        time.sleep(poll)


class _Follower:
    """The follow loop of one run: looks, steps of new frames, the growing record, progress."""

    def __init__(self, base: PredictJob, policy: RunPolicy, members: Sequence[Member], client: Client, watch: InputWatch,
                 claim: Claim, progress: bool) -> None:
        self.base, self.policy, self.members, self.client, self.watch, self.claim = base, policy, members, client, watch, claim
        self.ledger = Ledger(base.output_path)
        self.stats: list[FrameStats] = []  # of every frame in the output, in order
        self.progress = progress
        self.latencies: list[float] = []
        self.steps = 0
        self.chunks = 0
        self.redo: tuple[int, set[str]] | None = None  # a resumed run's first frame not fully written, and what is done
        per_frame = base.n_chunks  # the base job holds one frame
        self.step_frames = max(1, BATCH_CHUNKS // max(1, per_frame))  # a backlog goes in steps of about one submission batch

    def record(self) -> dict[str, Any]:
        """The run record of the output as it stands: the base job's, grown to every frame so far."""
        rec = self.base.record(self.policy)
        rec["time_points"] = list(range(len(self.stats)))
        rec["frame_stats"] = [{"mean": s.mean, "std": s.std} for s in self.stats]
        rec["output"]["shape"][0] = len(self.stats)
        rec["options"]["time"] = None
        rec["follow"] = True
        return rec

    def restore(self, recorded: dict[str, Any]) -> None:
        """Continue an interrupted follow: refuse another input, models or parameters; keep its frames'
        statistics; find the first frame whose chunks are not all recorded."""
        if recorded.get("options", {}).get("time") is not None:
            raise InputError(f"cannot follow {redact(self.base.output_path)}: it holds a batch run of time points "
                             f"{recorded['options']['time']}, not the whole time-lapse")
        frames = recorded.get("frame_stats", [])
        self.stats = [FrameStats(float(s["mean"]), float(s["std"])) for s in frames]
        mine = self.record()
        mine["frame_stats"][:1] = [{"mean": self.base.stats[0].mean, "std": self.base.stats[0].std}]
        fixed = {k: v for k, v in recorded.items() if k not in ("time_points", "follow")}
        now = {k: v for k, v in mine.items() if k not in ("time_points", "follow")}
        t_axis = self.base.input_dims.index("t")
        for rec in (fixed, now):  # what grows with the time-lapse: compared for its first frame only
            rec["frame_stats"] = rec["frame_stats"][:1]
            rec["output"] = {**rec["output"], "shape": rec["output"]["shape"][1:]}
            shape = list(rec["input"]["shape"])
            rec["input"] = {**rec["input"], "shape": shape[:t_axis] + shape[t_axis + 1:], "missing_chunks_filled": None}
        diff = differences(fixed, now)
        if diff:
            raise InputError(
                f"cannot resume {redact(self.base.output_path)}: it was started with other settings; " + "; ".join(diff)
                + " (follow again with the same input, models and parameters, or pass --overwrite to start over)"
            )
        done = self.ledger.done()
        per_frame = Counter(key.split("-", 1)[0] for key in done)  # "t12" -> its chunks recorded
        first = next((t for t in range(len(self.stats)) if per_frame[f"t{t}"] < self.base.n_chunks), len(self.stats))
        if first < len(self.stats):
            self.redo = (first, done)

    def run(self, idle_timeout: float | None, poll: float) -> FollowSummary:
        bar = tqdm(desc="follow", unit="frame", disable=not self.progress, initial=len(self.stats), total=len(self.stats))
        predicted, last_new = 0, time.monotonic()
        seen: dict[int, float] = {}  # frame -> when it was first seen complete
        try:
            if self.redo is not None:  # a resumed follow's unfinished frames, before any new one
                first, done = self.redo
                predicted += self._step(first, len(self.stats), done, seen, bar, redo=True)
            while True:
                length, ready, marked = self.watch.look(len(self.stats))
                now = time.monotonic()
                for t in range(len(self.stats), ready):
                    seen.setdefault(t, now)
                if ready > len(self.stats):
                    last_new = now
                    bar.total = max(bar.total or 0, ready)
                    stop = min(ready, len(self.stats) + self.step_frames)
                    predicted += self._step(len(self.stats), stop, set(), seen, bar)
                    continue
                if marked:
                    if ready < length:
                        if self.base.options.missing_chunks == "fail":
                            self.watch.refuse_incomplete(ready, length)
                        for t in range(ready, length):
                            seen.setdefault(t, now)
                        predicted += self._step(ready, length, set(), seen, bar)
                        continue
                    return self._summary(predicted, "the input is marked complete")
                if idle_timeout is not None and now - last_new > idle_timeout:
                    return self._summary(predicted, f"no new frame in {idle_timeout:g} s (--idle-timeout)")
                self._show_lag(bar, seen)
                time.sleep(poll)
        finally:
            bar.close()

    def _step(self, start: int, stop: int, skip: set[str], seen: dict[int, float], bar: Any, redo: bool = False) -> int:
        """Predict frames [start, stop) into the output: created at the first step; else its record
        grown first (a crash then leaves frames to redo, never chunks written but unrecorded), then its t axis."""
        job = more_frames(self.base, start, stop, self.members)
        if redo:  # a resumed follow's unfinished frames: recorded already, and they must still read the same
            if any(not (math.isclose(a.mean, b.mean, rel_tol=1e-9) and math.isclose(a.std, b.std, rel_tol=1e-9))
                   for a, b in zip(self.stats[start:stop], job.stats, strict=True)):
                raise InputError(f"cannot resume {redact(job.output_path)}: frames {start}..{stop - 1} of the input changed since they were recorded")
        else:
            self.stats[start:] = list(job.stats)
        if start == 0 and not self.ledger.output_exists():
            create_or_leave_nothing(job, self.policy, self.claim)
        self.ledger.write_record(self.record())
        grow_time_axis(job.output_path, stop)
        (summary,) = execute_many([job], [self.policy], self.client, skips=[skip], progress=False)
        self.chunks += summary.chunks
        end = time.monotonic()
        self.latencies += [end - seen[t] for t in range(start, stop) if t in seen]
        self.steps += 1
        bar.total = max(bar.total or 0, stop)
        bar.update(stop - bar.n)
        self._show_lag(bar, seen)
        return stop - start

    def _show_lag(self, bar: Any, seen: dict[int, float]) -> None:
        waiting = [t for t in seen if t >= len(self.stats)]
        behind = time.monotonic() - min(seen[t] for t in waiting) if waiting else 0.0
        last = f"{self.latencies[-1]:.1f}s" if self.latencies else "-"
        bar.set_postfix_str(f"behind {len(waiting)} frame(s), {behind:.1f}s; last frame's latency {last}", refresh=True)

    def _summary(self, predicted: int, why: str) -> FollowSummary:
        return FollowSummary(self.base.output_path, predicted, len(self.stats), self.steps, tuple(self.latencies), why, self.chunks, self.policy)


