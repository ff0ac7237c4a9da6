"""Export a checkpoint as a bioimage.io model package (model spec 0.5), so that any bioimage.io
consumer (bioimageio.core, deepImageJ, ilastik, ...) can run it, and ``chunked-fnet predict`` can
read it back as an ensemble member (:mod:`chunked_fnet.model.bioimageio`).

The package holds the weights twice, as a ``pytorch_state_dict`` (the architecture is this
project's :mod:`chunked_fnet.model.unet`, copied into the package, so it runs without chunked_fnet)
and as ``torchscript``; a test input (raw intensities) and the model's output for it; z-scoring per
sample as preprocessing; the card's voxel size as the scale of the space axes; a cover image, a
README and the card itself (``config.chunked_fnet``). The package is written with
:mod:`bioimageio.spec`'s own description classes, which validate it on the way.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chunked_fnet.errors import InputError, OutputExistsError
from chunked_fnet.model import unet as unet_module
from chunked_fnet.model.checkpoint import ModelCard, load_checkpoint
from chunked_fnet.model.unet import FnetUNet, count_parameters

__all__ = ["DEFAULT_CITATION", "DEFAULT_LICENSE", "INPUT_ID", "declared_sizes", "default_halo", "export_bioimageio", "receptive_radius"]

#: The id of the package's input tensor (its output tensor is named after the structure).
INPUT_ID = "transmitted_light"
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_CITATION = (
    "Ounkomol C, Seshamani S, Maleckar MM, Collman F, Johnson GR (2018). Label-free prediction of three-dimensional "
    "fluorescence images from transmitted-light microscopy. Nature Methods 15, 917-920.",
    "10.1038/s41592-018-0111-2",
)
#: The rim (model voxels) in which a trained paper U-Net's output depends on its zero padding by more
#: than 1e-2 of its std (benchmarks/border_effect.py; the band blend's margin, sliding_window/auto.py).
TRAINED_RIM = 36
ARCHITECTURE_FILE = "fnet_unet.py"


def receptive_radius(depth: int) -> int:
    """An upper bound (model voxels) on how far an output voxel of a depth-``depth`` :class:`FnetUNet`
    sees: a 3x3 convolution at level i adds 2**i, the stride-2 (transposed) convolutions 2**i each."""
    return 6 * (2**depth - 1) + 2 * 2**depth + 1


def default_halo(depth: int) -> int:
    """The halo the package declares: the whole receptive field of a shallow U-Net (its tiles are then
    exact), but at most the measured rim of a trained deep one (beyond it the output changes by < 1e-2 std)."""
    return min(TRAINED_RIM, receptive_radius(depth))


def _min_size(halo: int, multiple: int) -> int:
    """The smallest size a multiple of ``multiple`` that leaves a voxel after cropping ``halo`` on both sides."""
    return multiple * (2 * halo // multiple + 1)


def declared_sizes(depth: int, multiple: int, halo: int | None = None) -> tuple[int, int]:
    """The ``(minimum input size, output halo)`` a package declares on each space axis.

    By default the minimum is the network's own multiple and there is no halo. A consumer pads an
    input thinner than the declared minimum (a 16-slice stack under a minimum of 56 was mirrored to
    56, and its prediction was then not its checkpoint's), and nothing in the U-Net needs more.
    bioimage.io requires ``minimum - 2 * halo >= 1``, and bioimageio.core pads a whole input by the
    halo on both sides before running it, so ``2 * halo`` must be a multiple of ``multiple`` too: at
    the minimum no halo fits both. An explicit ``halo`` (a multiple of ``multiple / 2``) is declared
    as given, and the minimum grows to the smallest multiple that leaves a voxel inside it.
    """
    if halo is None or halo == 0:
        return multiple, 0
    if halo < 0:
        raise InputError(f"halo must be >= 0 model voxels, got {halo}")
    if (2 * halo) % multiple:
        half = multiple // 2
        lower, upper = half * (halo // half), half * (halo // half + 1)
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise InputError(
            f"halo {halo}: bioimage.io consumers pad an input by the halo on both sides, and a depth-{depth} U-Net takes sizes "
            f"in multiples of {multiple}, so 2 * halo must be a multiple of {multiple}; use {options}"
        )
    return _min_size(halo, multiple), halo


def _test_shape(min_size: int, step: int, scales: Sequence[float]) -> tuple[int, int, int]:
    """Per axis the smallest valid size ``min + k * step`` that bioimageio.spec's check of the test output
    accepts: it compares ``size * scale / scale`` to the size exactly, in floating point (24 * 0.4 / 0.4 is
    24.000000000000004)."""
    sizes = range(min_size, min_size + 64 * step, step)
    return tuple(next(n for n in sizes if n * s / s == n) for s in scales)  # type: ignore[return-value]


def _check_card(path: Path, card: ModelCard) -> None:
    arch = card.architecture
    if arch.dims != 3 or arch.in_channels != 1 or arch.out_channels != 1:
        raise InputError(
            f"{path}: a {arch.dims}D model with {arch.in_channels} input and {arch.out_channels} output channel(s); "
            "bioimage.io export supports 3D single-channel models"
        )
    if card.normalization.clip is not None:
        raise InputError(f"{path}: the card clips normalised inputs to {card.normalization.clip}; export supports plain z-scoring")


def _test_input(shape: Sequence[int], sample: str | os.PathLike | None, card: ModelCard) -> np.ndarray:
    """Raw intensities ``(1, 1, Z, Y, X)``: the centre of ``sample``'s first frame resampled onto the model's
    voxel grid, or (no sample) a seeded, smoothed random volume."""
    if sample is None:
        from scipy.ndimage import gaussian_filter

        noise = np.random.default_rng(0).normal(size=shape)
        return (1000.0 + 400.0 * gaussian_filter(noise, 1.5)).astype(np.float32)[None, None]
    from chunked_fnet.io.reader import channel_index, open_image, spatial_frame
    from chunked_fnet.preprocess.resample import ModelGrid, resample_region

    image = open_image(sample)
    c = channel_index(image, card.input.channel, "input (transmitted-light)") if "c" in image.dims else 0
    frame = spatial_frame(image, 0, c)
    scale = image.attrs["scale"]
    grid = ModelGrid(tuple(frame.shape), (scale["z"], scale["y"], scale["x"]), card.voxel_size)  # type: ignore[arg-type]
    region = tuple(slice(max(0, (g - s) // 2), max(0, (g - s) // 2) + min(g, s)) for g, s in zip(grid.shape, shape, strict=True))
    values = resample_region(lambda source: frame[source].values, grid, region)
    # a z-stack thinner than the network's minimum input: mirrored, as the pipeline pads frames past their edges
    pad = [((s - n) // 2, s - n - (s - n) // 2) for n, s in zip(values.shape, shape, strict=True)]
    single = [p if n == 1 else (0, 0) for p, n in zip(pad, values.shape, strict=True)]  # one plane: nothing to mirror
    values = np.pad(values, single, mode="edge")
    pad = [(0, 0) if sp != (0, 0) else p for p, sp in zip(pad, single, strict=True)]
    while any(sum(p) for p in pad):
        step = [(min(a, n - 1), min(b, n - 1)) for (a, b), n in zip(pad, values.shape, strict=True)]
        values = np.pad(values, step, mode="reflect")
        pad = [(a - c, b - d) for (a, b), (c, d) in zip(pad, step, strict=True)]
    return values[None, None].astype(np.float32)


def _zscore(x: np.ndarray, eps: float) -> np.ndarray:
    """bioimage.io's ``zero_mean_unit_variance`` over the whole sample: ``(x - mean) / (std + eps)``."""
    x64 = x.astype(np.float64)
    return ((x64 - x64.mean()) / (x64.std() + eps)).astype(np.float32)


def _cover(path: Path, x: np.ndarray, y: np.ndarray, structure: str) -> None:
    """A 2:1 PNG: the middle z slice of the test input beside the model's output for it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    z = x.shape[2] // 2
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    for ax, data, title in zip(axes, (x[0, 0, z], y[0, 0, z]), ("transmitted light (test input)", f"{structure} (prediction)"), strict=True):
        lo, hi = np.percentile(data, (0.5, 99.5))
        ax.imshow(data, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _readme(card: ModelCard, halo: int, min_size: int, step: int, source: str) -> str:
    rim = default_halo(card.architecture.depth)
    if halo >= rim:
        tiles = f"Crop or blend away a halo of {halo} voxels where tiles meet: the network's zero padding reaches that far in."
    else:
        half = max(1, step // 2)
        enough = half * -(-rim // half)  # the smallest halo >= rim that bioimage.io consumers can pad by
        tiles = (
            f"The declared halo is {halo} voxels (bioimage.io needs the minimum size to exceed twice the halo, and a larger "
            f"minimum would make consumers pad thin stacks); the network's zero padding reaches up to {rim} voxels in, so where "
            f"you tile, overlap tiles by at least {rim} voxels on each side (or export with `--halo {enough}`, which raises the "
            f"minimum size to {_min_size(enough, step)})."
        )
    t = card.training
    lines = [
        f"# {card.structure}: label-free prediction from transmitted light",
        "",
        f"A 3D U-Net (Ounkomol et al. 2018) that predicts the fluorescence of **{card.structure}** from a "
        f"{card.input.modality} z-stack, trained with chunked_fnet and exported from `{source}`.",
        "",
        "## Input and output",
        "",
        f"* input `{INPUT_ID}`: one channel ({card.input.modality}), axes batch, channel, z, y, x; "
        f"voxel size {card.voxel_size[0]:g} x {card.voxel_size[1]:g} x {card.voxel_size[2]:g} µm (z, y, x). "
        "Resample other images to this voxel size first.",
        "* preprocessing: z-scoring with the mean and standard deviation of the whole image (chunked_fnet uses the "
        "statistics of the whole frame, also when it predicts in tiles).",
        f"* sizes: at least {min_size} voxels per axis, in steps of {step} (the U-Net's down-sampling).",
        f"* output `{card.structure}`: z-scored fluorescence, same shape as the input. {tiles}",
        "",
        "## Training",
        "",
        f"* data: {t.dataset}",
    ]
    details = {
        "iterations": t.iterations, "batch size": t.batch_size, "patch (z, y, x)": t.patch_shape,
        "learning rate": t.learning_rate, "loss": t.loss, "seed": t.seed, "created": t.created,
    }
    lines += [f"* {k}: {v}" for k, v in details.items() if v is not None]
    if card.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(card.metrics.items())]
    lines += [
        "",
        "## Validation",
        "",
        "The package's test input is z-scored and run through the exported network; `bioimageio test` reproduces the "
        "test output from it with both weight formats (pytorch_state_dict and torchscript).",
        "",
        "## Running it",
        "",
        "With chunked_fnet (chunked, seam-free, any image size, on a dask cluster):",
        "",
        "    chunked-fnet predict IMAGE.zarr --models THIS_PACKAGE.zip --out prediction.zarr",
        "",
        "or with any bioimage.io consumer, e.g. `bioimageio predict`.",
        "",
    ]
    return "\n".join(lines)


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
        if not out.is_file():
            raise InputError(f"refusing to overwrite {out}: it is not a file (a bioimage.io package is one .zip file)")


def export_bioimageio(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sample: str | os.PathLike | None = None,
    authors: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,
    halo: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` as the bioimage.io model package ``out`` (a .zip); returns its path.

    ``sample``: an OME-Zarr image whose first frame's centre (mirrored where too thin) becomes the test input (default: a seeded
    random volume); ``authors``: names (default: the current user); ``halo``: model voxels to crop
    where tiles meet (default none, so the minimum input is the network's multiple; one raises the
    minimum to fit it, see :func:`declared_sizes`). Refuses an existing ``out`` unless ``overwrite``.
    """
    from bioimageio.spec import save_bioimageio_package

    src, out = Path(checkpoint), Path(out)
    if out.suffix != ".zip":
        raise InputError(f"{out}: a bioimage.io package is a .zip file; name the output NAME.zip")
    _refuse_existing(out, overwrite)
    if not out.parent.is_dir():
        raise InputError(f"{out}: parent directory {out.parent} does not exist")
    model, card = load_checkpoint(src)
    _check_card(src, card)
    arch = card.architecture
    step = arch.multiple
    min_size, halo = declared_sizes(arch.depth, step, None if halo is None else int(halo))
    eps = 1e-6
    # the test input is as large as the receptive rim needs (not the minimum): a meaningful test and cover
    test_size = max(min_size, _min_size(max(halo, default_halo(arch.depth)), step))
    x = _test_input(_test_shape(test_size, step, card.voxel_size), sample, card)
    with torch.no_grad():
        y = model(torch.from_numpy(_zscore(x, eps))).numpy()

    with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name).resolve()
        shutil.copyfile(unet_module.__file__, tmp / ARCHITECTURE_FILE)
        torch.save(model.state_dict(), tmp / "weights.pt")
        with warnings.catch_warnings():  # FnetUNet.check_input's size checks are traced as constants: that is wanted
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates tracing; bioimage.io reads torchscript
            traced = torch.jit.trace(model, torch.zeros(1, 1, *x.shape[2:]), check_trace=False)
        traced.save(str(tmp / "weights.torchscript.pt"))
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        import tifffile

        tifffile.imwrite(tmp / "sample_input.tif", x[0, 0])  # for people and viewers; .npy is not an image format
        tifffile.imwrite(tmp / "sample_output.tif", y[0, 0])
        _cover(tmp / "cover.png", x, y, card.structure)
        (tmp / "README.md").write_text(_readme(card, halo, min_size, step, src.name), encoding="utf-8")
        descr = _describe(card, tmp, halo=halo, min_size=min_size, step=step, eps=eps, authors=authors, license=license, model=model)
        partial = tmp / out.name
        save_bioimageio_package(descr, output_path=partial)
        _refuse_existing(out, overwrite)  # again: something may have appeared there meanwhile
        os.replace(partial, out)
    return out


def _describe(
    card: ModelCard, tmp: Path, *, halo: int, min_size: int, step: int, eps: float, authors: Sequence[str], license: str, model: FnetUNet
) -> Any:
    """The package's :class:`bioimageio.spec.model.v0_5.ModelDescr` (validated as it is built)."""
    from bioimageio.spec.model import v0_5

    structure = card.structure
    output_id = _tensor_id(structure)
    space_in = [
        v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=min_size, step=step), scale=s, unit="micrometer")
        for a, s in zip("zyx", card.voxel_size, strict=True)
    ]
    space_out = []
    for a, s in zip("zyx", card.voxel_size, strict=True):
        size = v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(a))
        axis = {"id": v0_5.AxisId(a), "size": size, "scale": s, "unit": "micrometer"}
        space_out.append(v0_5.SpaceOutputAxisWithHalo(**axis, halo=halo) if halo else v0_5.SpaceOutputAxis(**axis))
    channel_name = str(card.input.channel) if isinstance(card.input.channel, str) else card.input.modality
    zscore = v0_5.ZeroMeanUnitVarianceDescr(
        kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in ("channel", "z", "y", "x")], eps=eps)
    )
    inputs = [
        v0_5.InputTensorDescr(
            id=v0_5.TensorId(INPUT_ID),
            description=f"{card.input.modality} z-stack, raw intensities",
            axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(_tensor_id(channel_name))]), *space_in],
            test_tensor=v0_5.FileDescr(source=tmp / "test_input.npy"),
            sample_tensor=v0_5.FileDescr(source=tmp / "sample_input.tif"),
            preprocessing=[zscore],
        )
    ]
    outputs = [
        v0_5.OutputTensorDescr(
            id=v0_5.TensorId(output_id),
            description=f"predicted {structure} fluorescence, z-scored",
            axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(output_id)]), *space_out],
            test_tensor=v0_5.FileDescr(source=tmp / "test_output.npy"),
            sample_tensor=v0_5.FileDescr(source=tmp / "sample_output.tif"),
        )
    ]
    arch = card.architecture
    kwargs = {"dims": 3, "depth": arch.depth, "width": arch.width, "in_channels": 1, "out_channels": 1}
    pytorch_version = v0_5.Version(torch.__version__.split("+")[0])
    weights = v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=tmp / "weights.pt",
            architecture=v0_5.ArchitectureFromFileDescr(source=tmp / ARCHITECTURE_FILE, callable=v0_5.Identifier("FnetUNet"), kwargs=kwargs),
            pytorch_version=pytorch_version,
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(source=tmp / "weights.torchscript.pt", pytorch_version=pytorch_version, parent="pytorch_state_dict"),
    )
    t = card.training
    training = {
        "training_preprocessing": "z-scoring of every image with its own mean and standard deviation (inputs and targets)",
        "training_batch_size": t.batch_size,
        "initial_learning_rate": t.learning_rate,
        "loss_function": t.loss,
        "optimizer": "torch.optim.Adam",
    }
    bioimageio_config = v0_5.BioimageioConfig(
        architecture_type="3D U-Net",
        architecture_description=f"the U-Net of Ounkomol et al. 2018, depth {arch.depth}, width {arch.width}",
        modality=card.input.modality,
        target_structure=[structure],
        task="label-free prediction (image-to-image regression)",
        model_parameter_count=count_parameters(model),
        training=v0_5.TrainingDetails(**{k: v for k, v in training.items() if v is not None}),
    )
    text, doi = DEFAULT_CITATION
    names = list(authors) or [getpass.getuser()]
    return v0_5.ModelDescr(
        name=f"chunked_fnet {structure} label-free prediction"[:128],
        description=f"Predicts {structure} fluorescence in 3D from a {card.input.modality} z-stack (a chunked_fnet U-Net).",
        authors=[v0_5.Author(name=n) for n in names],
        cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi))],
        license=v0_5.LicenseId(license),
        documentation=v0_5.FileDescr(source=tmp / "README.md"),
        covers=[v0_5.FileDescr(source=tmp / "cover.png")],
        tags=["3d", "unet", "pytorch", "label-free", "transmitted-light", "fluorescence-light-microscopy", structure.lower()],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        training_data=_training_data(card, names, license),
        config=v0_5.Config(bioimageio=bioimageio_config, chunked_fnet={"card": card.model_dump(mode="json")}),
    )


def _training_data(card: ModelCard, authors: Sequence[str], license: str) -> Any:
    """The training data as an inline bioimage.io dataset description (there is no dataset id to link)."""
    from bioimageio.spec.dataset import v0_3 as dataset

    t = card.training
    return dataset.DatasetDescr(
        name=_resource_name(f"{card.structure} training data"),
        description=f"{t.dataset} (paired {card.input.modality} and {card.structure} fluorescence z-stacks; "
        f"{t.iterations if t.iterations is not None else 'unknown'} iterations)",
        authors=[dataset.Author(name=n) for n in authors],
        license=dataset.LicenseId(license),
        tags=["3d", "label-free", card.structure.lower()],
    )


def _resource_name(text: str) -> str:
    """``text`` with only the characters bioimage.io allows in names."""
    import string

    allowed = set(string.ascii_letters + string.digits + "_+- ()")
    return "".join(c if c in allowed else "-" for c in text)[:128]


def _tensor_id(name: str) -> str:
    """``name`` as a bioimage.io tensor/channel id: lower case letters, digits and underscores."""
    import re

    ident = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "output"
    return ident if ident[0].isalpha() else f"t_{ident}"
