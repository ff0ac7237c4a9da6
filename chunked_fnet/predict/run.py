"""Predict an image (or the fields of a plate) on a dask.distributed cluster, in three steps:

1. plan each job (``plan.py``: checks, frame statistics; bad input fails before any worker starts);
2. prepare the run (``prepare.py``: connect, resolve each job's policy once, create the outputs);
3. submit and follow the tasks (``submit.py``), then return the written output lazily.

An image is the plate path with one field: :func:`run_jobs` serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import xarray as xr
from distributed import Client

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import InputError
from chunked_fnet.io.reader import open_image
from chunked_fnet.predict.submit import RunSummary, execute_many
from chunked_fnet.predict.job import PredictJob
from chunked_fnet.predict.ledger import Ledger
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.ownership import Claim, already_exists, claimed, clear_for_overwrite, refuse_if_held, refuse_unless_replaceable
from chunked_fnet.predict.plan import plan
from chunked_fnet.predict.prepare import create_or_leave_nothing, prepare

__all__ = ["claimed_cluster", "predict", "refuse_before_claim", "refuse_resume_with_overwrite", "run_jobs", "start_writing"]


def refuse_resume_with_overwrite(resume: bool, overwrite: bool) -> None:
    """Checked before any planning, so that a contradictory command fails at once."""
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: resume keeps the finished chunks, overwrite deletes them")


def refuse_before_claim(target: str, *, resume: bool, overwrite: bool) -> None:
    """What refuses a run into ``target`` before it claims it (no worker started, nothing written): a
    contradictory command, a live holder (named first: "already exists" would not say who), an overwrite
    of what is not a zarr store, an existing output without ``resume`` or ``overwrite``."""
    refuse_resume_with_overwrite(resume, overwrite)
    refuse_if_held(target)
    if overwrite:
        refuse_unless_replaceable(target)
    elif not resume and Ledger(target).output_exists():
        raise already_exists(target)


@contextmanager
def claimed_cluster(target: str, client: Client | ClusterSpec | None) -> Iterator[tuple[Claim, Client]]:
    """``target`` claimed for this run alone (predict/ownership.py), then the cluster connected (or
    started): from here to the end no other run writes the output, nor removes it."""
    with claimed(target) as claim:
        context = nullcontext(client) if isinstance(client, Client) else local_client(client or ClusterSpec())
        with context as c:
            yield claim, c


def start_writing(claim: Claim, target: str, *, resume: bool, overwrite: bool) -> None:
    """Once every check has passed: from now on the claim stays when the run ends (it wrote). An overwrite
    clears the output now; an output made by a run that ended between our check and our claim is refused."""
    claim.writing = True
    if overwrite:
        clear_for_overwrite(target)
    elif not resume and Ledger(target).output_exists():
        raise already_exists(target)


def run_jobs(
    jobs: Sequence[PredictJob],
    client: Client | ClusterSpec | None,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    output: str | None = None,
    before_create: Callable[[], None] | None = None,
) -> list[RunSummary]:
    """Run planned jobs as one run: connect (an unreachable scheduler leaves nothing behind), resolve
    each job's policy and refuse what cannot run (:func:`~chunked_fnet.predict.prepare.prepare`), claim
    ``output`` (a plate; default: the one job's output) for this run alone (predict/ownership.py), call
    ``before_create`` (a plate's own metadata), create the outputs not yet started, run every task."""
    target = output or jobs[0].output_path
    refuse_before_claim(target, resume=resume, overwrite=overwrite)
    with claimed_cluster(target, client) as (claim, c):
        policies, skips = prepare(jobs, c, resume=resume, overwrite=overwrite)
        start_writing(claim, target, resume=resume, overwrite=overwrite)
        if before_create is not None:
            before_create()
        for job, policy, skip in zip(jobs, policies, skips, strict=True):
            if skip is None:
                create_or_leave_nothing(job, policy, claim)
        return execute_many(jobs, policies, c, skips=[s or set() for s in skips], progress=progress, labels=labels, output=output)


def predict(
    image: str | Path | xr.DataArray,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    client: Client | ClusterSpec | None = None,
    series: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> tuple[xr.DataArray, RunSummary]:
    """Predict every structure of ``models`` for ``image`` (an OME-Zarr path, or a DataArray opened
    with :func:`chunked_fnet.open_image`) into the OME-Zarr ``out``; returns the output, lazily.

    ``client`` is a connected dask client, or a :class:`ClusterSpec` (default: local worker
    processes) to start once the inputs have been checked, so bad input fails before any worker starts.
    ``resume=True`` continues an interrupted run into ``out``: only chunks without a completion
    record are computed, after checking that input, models and parameters are the interrupted run's.
    """
    refuse_resume_with_overwrite(resume, overwrite)
    job = plan(image, models, out, options or PredictOptions(), series=series, statistics="tasks")
    (summary,) = run_jobs([job], client, resume=resume, overwrite=overwrite, progress=progress)
    return open_image(out), summary
