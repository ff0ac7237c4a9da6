"""A neuroglancer view of a prediction (and its transmitted-light input) straight from the OME-Zarr stores.

Neuroglancer reads the stores itself (its ``zarr2://`` / ``zarr3://`` sources with OME-NGFF metadata),
so scale, translation, time and channel axes come from the files, and the layers overlay each other
at their physical positions: nothing is resampled or copied. Local stores are served by
:class:`~chunked_fnet.viz.serve.StoreServer` on 127.0.0.1; the neuroglancer client itself is the one
bundled in the ``neuroglancer`` Python package, also served on 127.0.0.1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from chunked_fnet.errors import InputError
from chunked_fnet.io.reader import open_image, read_metadata
from chunked_fnet.io.store import is_url
from chunked_fnet.io.units import metres, seconds
from chunked_fnet.viz.display import FULL_PERCENTILES, STRUCTURE_PERCENTILES, percentile_range
from chunked_fnet.viz.serve import RemoteStore, StoreServer

#: OME-NGFF versions the neuroglancer client (2.41) reads, and the zarr format each must be stored in
#: (its zarr driver accepts OME 0.4 and 0.5, and 0.5 only in zarr v3); both our writer's versions.
NEUROGLANCER_NGFF = {"0.4": 2, "0.5": 3}
#: URL schemes neuroglancer fetches by itself; anything local is served over HTTP instead.
REMOTE_SCHEMES = ("http://", "https://", "gs://", "s3://")
SPACE = ("z", "y", "x")
#: The grey transmitted light at half strength, so the additive colours on top of it stay visible.
INPUT_OPACITY = 0.5
#: About how many screen pixels (width, height) one cross-section panel spans in a 1200 x 800 viewer,
#: per layout: the initial zoom fits the prediction's field of view into it.
PANEL_PX = {"4panel": (580, 330), "xy-3d": (580, 680), "xz-3d": (580, 680), "yz-3d": (580, 680)}
SINGLE_PANEL_PX = (1150, 680)


@dataclass(frozen=True)
class ImageSource:
    """One OME-Zarr image as neuroglancer will see it: where it is, and what our reader says about it."""

    path: str
    source: str  # the neuroglancer data source URL, e.g. zarr3://http://127.0.0.1:PORT/prediction/
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    scale: dict[str, float]
    translation: dict[str, float]
    units: dict[str, str | None]
    channel_names: tuple[str, ...]
    channel_colors: tuple[str, ...]
    display_ranges: tuple[dict[str, float], ...]  # the omero 'window' of each channel
    name: str
    series: str | None = None

    def extent(self, dim: str) -> tuple[float, float]:
        """Physical [low, high) of a dim, voxel edges included (the extent a viewer draws)."""
        n = self.shape[self.dims.index(dim)]
        lo = self.translation.get(dim, 0.0) - self.scale.get(dim, 1.0) / 2
        return lo, lo + n * self.scale.get(dim, 1.0)


def describe_source(path: str | Path, url: str, *, series: str | None = None) -> ImageSource:
    """Read an image's metadata and check that neuroglancer can open it as it is stored."""
    image = open_image(path, series=series)
    meta = read_metadata(path, series=series)
    where = image.attrs["source"]
    if meta.version not in NEUROGLANCER_NGFF:
        raise InputError(
            f"{where}: OME-NGFF {meta.version} cannot be shown; neuroglancer reads NGFF {' and '.join(NEUROGLANCER_NGFF)} "
            "(rewrite it with chunked-fnet convert/predict --ngff-version 0.5)"
        )
    names = tuple(str(c) for c in image["c"].values) if "c" in image.dims else (str(image.name),)
    colors = tuple(meta.channel_colors or ("FFFFFF",) * len(names))
    ranges = tuple(meta.display_ranges or ({},) * len(names))
    return ImageSource(
        path=str(path),
        source=f"zarr{NEUROGLANCER_NGFF[meta.version]}://{url}",
        dims=tuple(image.dims),
        shape=tuple(int(n) for n in image.shape),
        scale=dict(image.attrs["scale"]),
        translation=dict(image.attrs["translation"]),
        units=dict(image.attrs["units"]),
        channel_names=names,
        channel_colors=colors,
        display_ranges=ranges,
        name=str(image.name),
        series=series,
    )


def _stored_range(stored: Mapping[str, float], fallback: tuple[float, float]) -> tuple[float, float]:
    start, end = stored.get("start"), stored.get("end")
    if start is None or end is None or not end > start:
        return fallback
    return float(start), float(end)


def data_ranges(image: ImageSource, channels: Sequence[int], percentiles: tuple[float, float], t_seconds: float | None = None) -> list[tuple[float, float]]:
    """Display ranges from the data: percentiles of the middle z plane at (or nearest) ``t_seconds``.
    Reads one plane per channel, so it stays cheap for any image size."""
    frame = open_image(image.path, series=image.series)
    if "t" in frame.dims:
        frame = frame.sel(t=t_seconds, method="nearest") if t_seconds is not None else frame.isel(t=0)
    if "z" in frame.dims:
        frame = frame.isel(z=frame.sizes["z"] // 2)
    if "c" not in frame.dims:
        return [percentile_range(frame.values, percentiles)]
    return [percentile_range(frame.isel(c=i).values, percentiles) for i in channels]


def grey_shader(limits: tuple[float, float]) -> str:
    """Transmitted light: a grey ramp over the display range."""
    return (
        f"#uicontrol invlerp normalized(range=[{limits[0]:.6g}, {limits[1]:.6g}])\n"
        "void main() {\n  emitGrayscale(normalized());\n}\n"
    )


def color_shader(color: str, limits: tuple[float, float]) -> str:
    """A predicted structure: black to its colour over the display range (meant for additive blending)."""
    return (
        f"#uicontrol invlerp normalized(range=[{limits[0]:.6g}, {limits[1]:.6g}])\n"
        f'#uicontrol vec3 color color(default="#{color.lstrip("#").lower()}")\n'
        "void main() {\n  emitRGB(color * normalized());\n}\n"
    )


def _global_dimensions(images: Sequence[ImageSource]) -> tuple[list[str], list[float], list[str]]:
    """The viewer's global axes (x, y, z, then t: neuroglancer displays the first three) in SI units,
    at the finest voxel of any image."""
    names, scales, units = [], [], []
    for dim in ("x", "y", "z", "t"):
        present = [im for im in images if dim in im.dims]
        if not present:
            continue
        to_si, unit = (seconds, "s") if dim == "t" else (metres, "m")
        names.append(dim)
        scales.append(min(im.scale.get(dim, 1.0) * to_si(im.units.get(dim)) for im in present))
        units.append(unit)
    return names, scales, units


def build_state(
    prediction: ImageSource,
    input_image: ImageSource | None = None,
    *,
    input_channel: str | int = "brightfield",
    layout: str = "4panel",
    contrast: str = "data",
) -> Any:
    """The neuroglancer ``ViewerState``: the input's transmitted-light channel as a grey layer, then one
    additive layer per predicted structure in its colour, centred on the prediction's first time point.

    ``contrast="data"`` sets each layer's display range from the data (one plane; structures from their
    median, the background, up: see :mod:`chunked_fnet.viz.display`); ``"file"`` uses the display ranges
    (omero ``window``) stored in the files. Either can be changed in neuroglancer's layer panel.
    """
    import neuroglancer

    if contrast not in ("data", "file"):
        raise InputError(f"contrast must be 'data' or 'file', got {contrast!r}")
    t0 = prediction.translation.get("t") if "t" in prediction.dims else None
    structure_ranges = [_stored_range(r, (-1.0, 4.0)) for r in prediction.display_ranges]
    if contrast == "data":
        structure_ranges = data_ranges(prediction, range(len(prediction.channel_names)), STRUCTURE_PERCENTILES, t0)
    state = neuroglancer.ViewerState()
    names, scales, units = _global_dimensions([prediction] + ([input_image] if input_image else []))
    state.dimensions = neuroglancer.CoordinateSpace(names=names, scales=scales, units=units)
    if input_image is not None:
        index = _input_index(input_image, input_channel)
        grey = _stored_range(input_image.display_ranges[index], (0.0, 1.0))
        if contrast == "data":
            grey = data_ranges(input_image, [index], FULL_PERCENTILES, t0)[0]
        _add_layer(state, f"input: {input_image.channel_names[index]}", input_image, index, shader=grey_shader(grey), opacity=INPUT_OPACITY)
    for index, structure in enumerate(prediction.channel_names):
        shader = color_shader(prediction.channel_colors[index], structure_ranges[index])
        _add_layer(state, structure, prediction, index, shader=shader, blend="additive", opacity=1.0)
    position = []
    for dim, scale in zip(names, scales, strict=True):
        if dim == "t":
            start = prediction.translation.get("t", 0.0) * seconds(prediction.units.get("t"))
            position.append(start / scale + 0.5)  # inside the first frame
        else:
            lo, hi = prediction.extent(dim)
            position.append((lo + hi) / 2 * metres(prediction.units.get(dim)) / scale)
    state.position = position
    span = {d: (prediction.extent(d)[1] - prediction.extent(d)[0]) * metres(prediction.units.get(d)) for d in ("y", "x")}
    finest = min(s for d, s in zip(names, scales, strict=True) if d != "t")
    width, height = PANEL_PX.get(layout, SINGLE_PANEL_PX)
    state.cross_section_scale = max(span["x"] / finest / width, span["y"] / finest / height, 1e-3)
    state.projection_scale = max(span.values()) / finest * 1.5
    state.display_dimensions = [d for d in ("x", "y", "z") if d in names]
    state.layout = layout
    state.cross_section_background_color = "#000000"  # fluorescence adds onto black
    state.show_default_annotations = False  # no bounding-box wireframe over the data
    return state


def _input_index(image: ImageSource, channel: str | int) -> int:
    names = list(image.channel_names)
    if isinstance(channel, int) or str(channel).lstrip("-").isdigit():
        i = int(channel)
        if not -len(names) <= i < len(names):
            raise InputError(f"{image.path}: input channel index {i} out of range; channels are {names}")
        return i % len(names)
    if channel not in names:
        raise InputError(f"{image.path}: no transmitted-light channel named {channel!r}; channels are {names} (use --channel)")
    return names.index(channel)


def _add_layer(state: Any, name: str, image: ImageSource, index: int, **settings: Any) -> None:
    """An image layer showing channel ``index`` of ``image``: neuroglancer makes an OME channel axis the
    layer-local dimension ``c'``, with channel i centred on local coordinate i."""
    import neuroglancer

    position = {"local_position": [index]} if "c" in image.dims else {}
    state.layers.append(name=name, layer=neuroglancer.ImageLayer(source=image.source, **settings, **position))


@dataclass
class ViewSession:
    """A running view: the store server, the neuroglancer viewer and its state. Close it when done."""

    viewer: Any
    state: Any
    server: StoreServer | None

    @property
    def viewer_url(self) -> str:
        """The bundled neuroglancer client, served on 127.0.0.1 and kept in sync with this process."""
        return str(self.viewer.get_viewer_url())

    def state_url(self, client: str | None = None) -> str:
        """A URL holding the whole state, for any neuroglancer client (while the stores are served)."""
        import neuroglancer

        return str(neuroglancer.to_url(self.state, prefix=client or neuroglancer.url_state.default_neuroglancer_url))

    def close(self) -> None:
        import neuroglancer

        neuroglancer.stop()
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> ViewSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_view(
    prediction: str | Path,
    input_image: str | Path | None = None,
    *,
    input_channel: str | int = "brightfield",
    input_series: str | None = None,
    layout: str = "4panel",
    contrast: str = "data",
    port: int = 0,
    proxy: bool = False,
) -> ViewSession:
    """Serve the stores on 127.0.0.1 and start a neuroglancer viewer showing them (see :func:`build_state`).

    Remote stores are handed to neuroglancer as URLs (it fetches them itself: public buckets, web
    servers), or with ``proxy`` served through 127.0.0.1 with this process's credentials (private buckets).
    """
    try:
        import neuroglancer
    except ImportError as exc:
        raise InputError("viewing needs the neuroglancer package: pip install 'chunked_fnet[viz]'") from exc

    images: dict[str, ImageSource] = {}
    stores: dict[str, Path | RemoteStore] = {}
    for name, path, series in (("prediction", prediction, None), ("input", input_image, input_series)):
        if path is None:
            continue
        if is_url(path) and proxy:
            stores[name] = RemoteStore.from_url(str(path).rstrip("/") + (f"/{series}" if series is not None else ""))
            images[name] = describe_source(path, "", series=series)
        elif is_url(path):
            if not str(path).startswith(REMOTE_SCHEMES):
                raise InputError(f"{path}: neuroglancer reads {', '.join(REMOTE_SCHEMES)} URLs or local stores, not this one")
            url = str(path).rstrip("/") + "/" + (f"{series}/" if series is not None else "")
            images[name] = describe_source(path, url, series=series)
        else:
            folder = Path(str(path).removeprefix("file://"))
            stores[name] = folder / str(series) if series is not None else folder
            images[name] = describe_source(stores[name], "")  # checked before anything listens
    _check_overlap(images["prediction"], images.get("input"))
    server = StoreServer(stores, port=port) if stores else None
    try:
        for name in stores:
            version = images[name].source.split(":", 1)[0]  # "zarr2" / "zarr3"
            images[name] = replace(images[name], source=f"{version}://{server.url_for(name)}")  # type: ignore[union-attr]
        state = build_state(images["prediction"], images.get("input"), input_channel=input_channel, layout=layout, contrast=contrast)
        neuroglancer.set_server_bind_address("127.0.0.1", 0)
        viewer = neuroglancer.Viewer()
        viewer.set_state(state)
    except BaseException:
        if server is not None:
            server.close()
        raise
    return ViewSession(viewer=viewer, state=state, server=server)


def _check_overlap(pred: ImageSource, inp: ImageSource | None) -> None:
    """Refuse an input that does not overlap the prediction: the layers would never be seen together."""
    if inp is None:
        return
    for dim in SPACE:
        if dim in pred.dims and dim in inp.dims:
            (a0, a1), (b0, b1) = pred.extent(dim), inp.extent(dim)
            if a1 <= b0 or b1 <= a0 or not math.isfinite(a0 + b0):
                raise InputError(
                    f"{inp.path} does not overlap {pred.path} in {dim} ({b0:g}..{b1:g} vs {a0:g}..{a1:g} "
                    f"{pred.units.get(dim) or ''}); is it the prediction's input?"
                )


def layer_summary(state: Any) -> list[dict[str, Any]]:
    """Name, source, channel and blending of each layer: what a user (or a test) checks first."""
    return [
        {
            "name": layer.name,
            "source": layer.source[0].url,
            "channel": list(np.asarray(layer.local_position)) if layer.local_position is not None else None,
            "blend": layer.blend,
        }
        for layer in state.layers
    ]
