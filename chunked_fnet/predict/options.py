"""The options of a prediction run: the one definition that the Python API, YAML configs and the CLI
flags all come from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chunked_fnet.io.writer import Compression


class PredictOptions(BaseModel):
    """How to tile, blend and store; the defaults suit a CPU laptop and a GPU alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_channel: str | int = Field("brightfield", description="the input's transmitted-light channel, by name or index")
    time: tuple[int, int] | None = Field(None, description="[start, stop) time points; default all")
    patch_shape: tuple[int, int, int] | Literal["auto"] = Field(
        "auto",
        description="model patch z, y, x on the model grid (multiples of the U-Net's down-sampling), or auto: the whole "
        "z-depth and y/x as large as the smallest worker's memory allows, chosen once per run and kept in its run record. "
        "An explicit patch too small for the overlap the models need (each voxel evaluated over 2x) is refused, "
        "naming the smallest that works, unless an overlap is given too (then it runs as asked)",
    )
    overlap: float | Literal["auto"] = Field(
        "auto",
        description="what neighbouring patches share: a fraction of the patch (< 1), model voxels (>= 1), or auto "
        "(96 voxels where patches meet: the 36-voxel rim that a trained U-Net's zero padding spoils, on each side, plus a "
        "blending ramp)",
    )
    blend: Literal["auto", "band", "gaussian", "cosine", "linear", "constant"] = Field(
        "auto",
        description="weight that blends overlapping patches; auto: band (weight only tapers across the overlap) for "
        "overlaps in voxels, gaussian for fractions",
    )
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description="patches per forward pass; auto: 1 with an auto patch (it already fills the memory budget), else 4. "
        "With an auto patch an explicit batch shares the budget: each patch gets 1/batch_size of it",
    )
    tta_flips: bool = Field(False, description="test-time augmentation: also predict the z, y and x flips, and average")
    skip_empty: float | Literal["off", "auto"] = Field(
        "off",
        description="skip empty background: a patch whose input is indistinguishable from white noise (camera noise on "
        "medium) is not evaluated and gets the models' response to flat medium; auto: at the measured level (4), or a "
        "level > 0 (a white-noise score: higher skips more); off: every patch evaluated. Outputs where no skipped patch "
        "has weight are unchanged; the skipped patches are counted in the summary",
    )
    chunks: tuple[int, int, int] = Field(
        (32, 256, 256), description="output chunk z, y, x on the output grid (see output_grid): one block and one chunk task each"
    )
    shards: tuple[int, int, int] | Literal["auto", "none"] | None = Field(
        "auto",
        description="zarr v3 shard z, y, x on the output grid (whole chunks; NGFF 0.5 only): one stored object and one write "
        "task per shard, its chunks still read one by one. auto: chunks gathered into objects of about 8 MiB, so the default "
        "chunks stay one object each and small chunks are sharded (measured: benchmarks/shards.py); none: one object per chunk",
    )
    dtype: Literal["float32", "float16"] = Field("float32", description="dtype the prediction is stored in")
    compression: Compression = Field(
        "lz4",
        description="how the output's chunks are compressed: lz4 (blosc lz4, byte shuffle: on a float prediction several times "
        "faster to write and to read than zstd, and smaller; every OME-Zarr reader has blosc), zstd (zarr's default) or none",
    )
    version: Literal["0.4", "0.5"] = Field("0.5", description="OME-NGFF version of the output: 0.5 (zarr v3) or 0.4 (zarr v2)")
    levels: int = Field(1, ge=1, description="pyramid levels written (1: full resolution only)")
    device: str = Field("auto", description="torch device: auto (CUDA when torch sees one, else cpu), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast where every worker computes bf16 natively (AMX/AVX512-BF16 CPUs, CUDA), else fp32; "
        "chosen once per run, kept in its run record and the output's attributes",
    )
    pad_mode: Literal["reflect", "symmetric", "edge", "constant"] = Field(
        "reflect", description="how the frame is extended past its edges for the patches that cross them"
    )
    output_grid: Literal["model", "input"] = Field(
        "model", description="write on the models' voxel grid, or interpolated back onto the input's grid"
    )
    nonfinite: Literal["fail", "fill"] = Field(
        "fail", description="NaN/Inf input voxels: refuse the frame, or predict them as the frame's mean"
    )
    missing_chunks: Literal["fail", "fill"] = Field(
        "fail",
        description="input chunks missing from the store (an interrupted copy, or a writer that skips empty chunks): "
        "refuse the run, or read them as the array's fill value",
    )
    retries: int = Field(2, ge=0, description="extra tries of a failing chunk task before the run reports it")
    profile: bool = Field(
        False, description="record every task's CPU and wall seconds by stage (read, normalize, forward, blend, finish, write, ...) "
        "in the run's ledger and its summary (chunked_fnet.profiling)",
    )
    stall_timeout: float = Field(
        1800.0, gt=0,
        description="seconds without any chunk finishing after which the run stops, everything finished kept, with a --resume hint",
    )


    @field_validator("shards", mode="before")
    @classmethod
    def _none_word_is_unsharded(cls, value: object) -> object:
        return None if value == "none" else value

    @model_validator(mode="after")
    def _shards_fit_chunks(self) -> PredictOptions:
        """Shards hold whole chunks, and only zarr v3 (NGFF 0.5) has them: refused here, before anything is written."""
        if isinstance(self.shards, tuple):
            if self.version == "0.4":
                raise ValueError(f"shards {list(self.shards)} need NGFF 0.5 (zarr v3); with version 0.4 pass shards none (--shards none)")
            if any(s < 1 or s % c for s, c in zip(self.shards, self.chunks, strict=True)):
                raise ValueError(f"shards {list(self.shards)} must be positive multiples of chunks {list(self.chunks)} (z, y, x)")
        return self

    @field_validator("batch_size")
    @classmethod
    def _batch_is_positive(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"batch_size is a number of patches >= 1 or auto, got {value}")
        return value

    @field_validator("skip_empty", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        return ("auto" if value else "off") if isinstance(value, bool) else value  # YAML reads on/off as booleans

    @field_validator("skip_empty")
    @classmethod
    def _level_is_positive(cls, value: float | str) -> float | str:
        if value not in ("off", "auto") and not (0 < value < float("inf")):
            raise ValueError(f"skip_empty is off, auto or a level > 0 (a white-noise score; auto: 4), got {value:g}")
        return value

    @field_validator("overlap")
    @classmethod
    def _overlap_is_a_fraction_or_voxels(cls, value: float | str) -> float | str:
        if value != "auto" and (value < 0 or (value >= 1 and value != int(value))):
            raise ValueError(f"overlap is a fraction of the patch in [0, 1) or a whole number of model voxels, got {value:g}")
        return value


# Options that change how a run is carried out but not a single output value: a resumed run may differ in them.
RUNTIME_OPTIONS = frozenset({"retries", "stall_timeout", "profile"})

# Options newer than some run records, with the value every output recorded before them was made with: a resume of
# such an output compares that value (an output from before ``compression`` is zstd, and is resumed with --compression zstd).
BEFORE_RECORDED = {"compression": "zstd"}
