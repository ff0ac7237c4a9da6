"""bioimage.io packages built by hand with bioimageio.spec, around networks that are not chunked_fnet's
U-Net (tests/plain_convnet.py), including ones predict must refuse (two inputs, 2D)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import plain_convnet
from plain_convnet import PlainConvNet

LAYERS = 3  # the net's receptive radius, declared as the output halo
MIN, STEP = 8, 4
SCALE_NM = 400.0  # 0.4 µm, declared in nanometres


def zscore(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's zero_mean_unit_variance over the whole sample."""
    return ((x - x.mean()) / (x.std() + eps)).astype(np.float32)


def plain_network(seed: int = 0) -> PlainConvNet:
    torch.manual_seed(seed)
    return PlainConvNet(layers=LAYERS).eval()


def _space(v0_5, ids: str, tensor: str | None) -> list:
    if tensor is None:
        size = v0_5.ParameterizedSize(min=MIN, step=STEP)
        return [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=size, scale=SCALE_NM, unit="nanometer") for a in ids]
    return [
        v0_5.SpaceOutputAxisWithHalo(
            id=v0_5.AxisId(a), size=v0_5.SizeReference(tensor_id=v0_5.TensorId(tensor), axis_id=v0_5.AxisId(a)),
            halo=LAYERS, scale=SCALE_NM, unit="nanometer",
        )
        for a in ids
    ]


def build_plain_package(
    out: Path, *, inputs: int = 1, space: str = "zyx", seed: int = 0, architecture: tuple[Path, str, dict] | None = None,
) -> Path:
    """A package of :class:`PlainConvNet` (pytorch_state_dict and torchscript) with channel-last axes,
    z-scoring, a halo and min/step sizes; ``inputs=2`` or ``space="yx"`` make ones predict refuses.
    ``architecture``: (source file, class name, kwargs) of another class with PlainConvNet's layers, which
    the state dict is then loaded into (tests/autocast_net.py)."""
    source, name, kwargs = architecture or (Path(plain_convnet.__file__), "PlainConvNet", {})
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    work = out.parent / f"{out.stem}_files"
    work.mkdir()
    net = plain_network(seed)
    shape = (1, *(16,) * len(space), 1)
    x = (500.0 + 100.0 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)
    if len(space) == 3:
        with torch.no_grad():
            y = net(torch.from_numpy(zscore(x))).numpy()
    else:  # never run: predict refuses 2D packages from their description
        y = zscore(x)
    np.save(work / "in.npy", x)
    np.save(work / "out.npy", y)
    torch.save(net.state_dict(), work / "weights.pt")
    torch.jit.script(net).save(str(work / "weights.ts"))
    (work / "README.md").write_text("# plain conv net\n\nA test package.\n\n## Validation\n\nBy its test tensors.\n")
    zscore_op = v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in space]))
    names = ["raw"] if inputs == 1 else ["raw", "mask"]
    in_tensors = [
        v0_5.InputTensorDescr(
            id=v0_5.TensorId(name),
            axes=[v0_5.BatchAxis(), *_space(v0_5, space, None), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("c")])],
            test_tensor=v0_5.FileDescr(source=work / "in.npy"),
            preprocessing=[zscore_op],
        )
        for name in names
    ]
    out_tensor = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("nuclei"),
        axes=[v0_5.BatchAxis(), *_space(v0_5, space, "raw"), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("nuclei")])],
        test_tensor=v0_5.FileDescr(source=work / "out.npy"),
    )
    version = v0_5.Version(torch.__version__.split("+")[0])
    descr = v0_5.ModelDescr(
        name="plain conv net",
        description="a plain 3D conv net for chunked_fnet's tests",
        authors=[v0_5.Author(name="chunked_fnet tests")],
        cite=[v0_5.CiteEntry(text="chunked_fnet tests", url="https://github.com/bioimage-io/spec-bioimage-io")],
        license=v0_5.LicenseId("MIT"),
        documentation=v0_5.FileDescr(source=work / "README.md"),
        inputs=in_tensors,
        outputs=[out_tensor],
        weights=v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=work / "weights.pt",
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=source, callable=v0_5.Identifier(name), kwargs={"layers": LAYERS, **kwargs}
                ),
                pytorch_version=version,
            ),
            torchscript=v0_5.TorchscriptWeightsDescr(source=work / "weights.ts", pytorch_version=version, parent="pytorch_state_dict"),
        ),
    )
    save_bioimageio_package(descr, output_path=out)
    return out
