"""Predict every field of an OME-Zarr plate (or of some of its wells) into an output plate, in one run.

Each field is an image and gets its own :class:`PredictJob` (planned by :func:`plan`, so it is checked
like any image, and its output ``PRED.zarr/A/1/0`` overlays its input field); all fields' tasks then go
to dask as one run with one progress bar (:func:`execute_many`). Every output field keeps its own run
record and chunk markers, so ``resume=True`` finishes each field where it stopped. A field that cannot
be predicted (e.g. it lacks the input channel) is refused by name and left out of the output plate;
the others are predicted, and the summary lists the refusals (the CLI then exits with status 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client

from chunked_fnet.cluster import ClusterSpec
from chunked_fnet.errors import ChunkedFnetError, InputError, one_line
from chunked_fnet.io.plate import create_plate, join, read_plate
from chunked_fnet.io.store import redact
from chunked_fnet.predict.submit import RunSummary
from chunked_fnet.config import differences
from chunked_fnet.predict.ledger import Ledger
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.ownership import already_exists
from chunked_fnet.predict.plan import plan
from chunked_fnet.predict.run import refuse_resume_with_overwrite, run_jobs


@dataclass(frozen=True)
class PlateSummary:
    output: str
    fields: tuple[str, ...]  # predicted fields, "A/1/0", in the plate's order
    runs: tuple[RunSummary, ...]  # one per predicted field
    refused: dict[str, str] = field(default_factory=dict)  # field -> why it was not predicted

    def __str__(self) -> str:
        chunks = sum(r.chunks for r in self.runs)
        total = sum(r.total_chunks for r in self.runs)
        seconds = max((r.seconds for r in self.runs), default=0.0)
        wells = len({f.rsplit("/", 1)[0] for f in self.fields})
        skipped = total - chunks
        resumed = f" ({skipped} of {total} were already done)" if skipped > 0 else ""
        precision = next((r.precision for r in self.runs if r.precision), "")
        text = (
            f"wrote {self.output}: {len(self.fields)} field(s) of {wells} well(s), {chunks} chunk tasks on "
            f"{max((r.workers for r in self.runs), default=0)} worker(s) in {seconds:.1f} s{resumed}, "
            f"{sum(r.patch_evaluations for r in self.runs)} patches evaluated" + (f"; {precision}" if precision else "")
        )
        if any(r.policy and r.policy.skip_empty is not None for r in self.runs):
            text += (f"; {sum(r.background_patches for r in self.runs)} background patches skipped, "
                     f"{sum(r.background_blocks for r in self.runs)} block tasks without a model call")
        if self.refused:
            text += f"; {len(self.refused)} field(s) refused: " + "; ".join(f"{k}: {v}" for k, v in self.refused.items())
        return text


def predict_plate(
    plate: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    wells: Sequence[str] | None = None,
    client: Client | ClusterSpec | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> PlateSummary:
    """Predict every field of the plate ``plate`` (or of ``wells``, e.g. ``["A/1", "B/3"]``) into the
    output plate ``out`` (same rows, columns and wells; each well lists the fields predicted).

    Fields that cannot be planned are refused (named in ``PlateSummary.refused``) and the others are
    predicted; when no field can be, :class:`InputError` lists why and nothing is written.
    """
    options = options or PredictOptions()
    refuse_resume_with_overwrite(resume, overwrite)
    info = read_plate(str(plate))
    out = str(out)
    jobs, names, refused = [], [], {}
    for well, fld in info.select(wells):
        name = f"{well}/{fld}"
        try:
            job = plan(join(info.path, well, fld), models, join(out, well, fld), options, statistics="tasks")
        except ChunkedFnetError as exc:
            refused[name] = one_line(redact(str(exc)))
        else:
            jobs.append(job)
            names.append(name)
    if not jobs:
        raise InputError(f"{info.path}: no field of the plate can be predicted: " + "; ".join(refused.values()))
    record = {"plate": info.path, "fields": names}  # a resume must select the same fields of the same plate
    ledger = Ledger(out)
    if resume:
        recorded = ledger.read_record()
        if recorded is None and ledger.output_exists():
            raise InputError(f"cannot resume {redact(out)}: it holds no plate run record (.chunked_fnet/run.json); choose another --out")
        diff = differences(recorded, record) if recorded is not None else []
        if diff:
            raise InputError(f"cannot resume {redact(out)}: it was started with other fields or another plate; " + "; ".join(diff))
    elif ledger.output_exists() and not overwrite:
        raise already_exists(out)

    def create() -> None:  # once every field is checked and the plate is this run's, before the first field is created
        create_plate(out, info, [tuple(n.rsplit("/", 1)) for n in names], options.version)  # type: ignore[misc]
        ledger.write_record(record)

    runs = run_jobs(jobs, client, resume=resume, overwrite=overwrite, progress=progress, labels=names, output=out, before_create=create)
    return PlateSummary(out, tuple(names), tuple(runs), refused)

