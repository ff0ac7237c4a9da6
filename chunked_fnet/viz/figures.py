"""The paper's figures, drawn from OME-Zarr images (lazy DataArrays from :func:`chunked_fnet.open_image`).

Every image panel is placed by its physical coordinates (µm), so an input on its own grid and a
prediction on the models' grid line up; each carries a scale bar in µm; structures are drawn in the
colours the OME-Zarr ``omero`` metadata gives them (the model cards' colours). Only the slices shown
are ever read. Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global backend),
so they work in any process, with or without a display.

- :func:`slices_figure`: z-slices of input / target / prediction side by side (the paper's Figure 3);
- :func:`metrics_figure`: per-structure metrics (normalised error, Pearson r, SSIM, PSNR, NRMSE, FSC
  resolution), train and test (Figure 4b);
- :func:`overlay_figure`: a merged multi-structure colour overlay of an ensemble prediction (Figure 5);
- :func:`timelapse_figure` / :func:`timelapse_gif`: merged predictions over time (Figure 6).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.colors import LinearSegmentedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from chunked_fnet.errors import InputError, OutputExistsError
from chunked_fnet.evaluate.metrics import METRICS
from chunked_fnet.io.reader import channel_index
from chunked_fnet.viz.display import FULL_PERCENTILES, STRUCTURE_PERCENTILES, percentile_range

FALLBACK_COLORS = ("3F7FFF", "FF00FF", "FFFF00", "FF3F3F", "00FF00", "FF9F00", "00FFFF", "FFFFFF")
DPI = 110
PANEL_IN = 2.4  # inches per image panel (largest side)


# ---------------------------------------------------------------- reading slices


def _source(image: xr.DataArray) -> str:
    return str(image.attrs.get("source", image.name))


def channel_names(image: xr.DataArray) -> list[str]:
    """Channel names (omero labels) of an image; its own name when it has no channel axis."""
    return [str(c) for c in image["c"].values] if "c" in image.dims else [str(image.name)]


def channel_colors(image: xr.DataArray) -> dict[str, str]:
    """Channel name -> hex colour from the image's omero metadata (a fallback palette where it has none)."""
    names = channel_names(image)
    colors = image.attrs.get("channel_colors") or [FALLBACK_COLORS[i % len(FALLBACK_COLORS)] for i in range(len(names))]
    return {n: "#" + str(c).lstrip("#") for n, c in zip(names, colors, strict=True)}


def _pick_structures(prediction: xr.DataArray, structures: Sequence[str] | None) -> list[str]:
    names = channel_names(prediction)
    if not structures:
        return names
    missing = [s for s in structures if s not in names]
    if missing:
        raise InputError(f"{_source(prediction)}: no predicted structure(s) {missing}; it holds {names}")
    return list(structures)


def _time_index(image: xr.DataArray, t: int) -> int:
    n = image.sizes.get("t", 1)
    if not -n <= t < n:
        raise InputError(f"{_source(image)}: time index {t} is out of range; the image has {n} time point(s), 0..{n - 1}")
    return t % n


def _input_frame(input_image: xr.DataArray, prediction: xr.DataArray, ti: int) -> xr.DataArray:
    """The input's frame nearest the physical time of the prediction's time point ``ti`` (or its only frame)."""
    if "t" not in input_image.dims:
        return input_image
    if "t" not in prediction.dims:
        return input_image.isel(t=0)
    return input_image.sel(t=float(prediction["t"].values[ti]), method="nearest")


def _plane(frame: xr.DataArray, channel: str, *, z: float | None = None, y: float | None = None) -> xr.DataArray:
    """One channel's xy plane nearest ``z`` µm, or xz plane nearest ``y`` µm, as a 2D DataArray."""
    if "c" in frame.dims:
        frame = frame.isel(c=channel_index(frame, channel, "display"))
    if y is not None:
        return frame.sel(y=y, method="nearest").transpose("z", "x")
    if "z" in frame.dims:
        frame = frame.sel(z=z if z is not None else float(frame["z"].values[frame.sizes["z"] // 2]), method="nearest")
    return frame.transpose("y", "x")


def _extent(plane: xr.DataArray) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in physical units, voxel edges included. Image rows
    run down for y (as a microscope image is shown) and up for z (the coverslip at the bottom: draw
    xz planes with ``origin="lower"``)."""
    (rows, cols) = plane.dims
    r, c = plane[rows].values.astype(float), plane[cols].values.astype(float)
    dr = float(r[1] - r[0]) if r.size > 1 else 1.0
    dc = float(c[1] - c[0]) if c.size > 1 else 1.0
    if rows == "z":
        return c[0] - dc / 2, c[-1] + dc / 2, r[0] - dr / 2, r[-1] + dr / 2
    return c[0] - dc / 2, c[-1] + dc / 2, r[-1] + dr / 2, r[0] - dr / 2


def _limits(values: np.ndarray) -> tuple[float, float]:
    """Limits of a single-channel panel (transmitted light, one target, one prediction)."""
    return percentile_range(values, FULL_PERCENTILES)


def structure_limits(values: np.ndarray) -> tuple[float, float]:
    """Limits of one structure in a merged overlay: background (the median) is black."""
    return percentile_range(values, STRUCTURE_PERCENTILES)


def _stretch(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    lo, hi = limits
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def merge_colors(planes: Mapping[str, np.ndarray], colors: Mapping[str, str], limits: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Additive RGB overlay: each structure stretched to [0, 1] over its limits, times its colour, summed
    and clipped (how fluorescence channels are merged on a microscope)."""
    first = next(iter(planes.values()))
    rgb = np.zeros((*first.shape, 3), dtype=np.float32)
    for name, values in planes.items():
        rgb += _stretch(values, limits[name])[..., None] * np.asarray(to_rgb(colors[name]), dtype=np.float32)
    return np.clip(rgb, 0.0, 1.0)


def _colormap(color: str) -> LinearSegmentedColormap:
    return LinearSegmentedColormap.from_list(f"black_{color.lstrip('#')}", ["#000000", color])


# ---------------------------------------------------------------- decorations


def nice_length(span: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k µm) of about a fifth of ``span``."""
    target = max(span / 5, 1e-9)
    power = 10 ** np.floor(np.log10(target))
    for step in (5, 2, 1):
        if step * power <= target:
            return float(step * power)
    return float(power)


def add_scale_bar(ax, span_um: float, unit: str = "µm", color: str = "white") -> float:  # noqa: ANN001 - matplotlib Axes
    """A labelled scale bar in the lower right, in the axes' data units (µm); returns its length."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = nice_length(span_um)
    label = f"{length:g} {unit}"
    bar = AnchoredSizeBar(
        ax.transData, length, label, "lower right", pad=0.3, color=color, frameon=False, size_vertical=span_um / 80,
        fontproperties={"size": 7},
    )
    ax.add_artist(bar)
    return length


def _label_outer(axes: np.ndarray, xlabel: str, ylabel: str) -> None:
    rows, cols = axes.shape
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.tick_params(labelsize=6, length=2)
            if i == rows - 1:
                ax.set_xlabel(xlabel, fontsize=7)
            else:
                ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=7)
            else:
                ax.tick_params(labelleft=False)


def _legend(fig: Figure, names: Sequence[str], colors: Mapping[str, str], ncols: int) -> None:
    """The structures' colours, below the panels."""
    fig.legend(handles=[Patch(color=colors[n], label=n) for n in names], loc="outside lower center", ncols=ncols, frameon=False, fontsize=7)


def _time_label(image: xr.DataArray, ti: int) -> str:
    if "t" not in image.dims:
        return ""
    seconds = float(image["t"].values[ti])
    unit = image.attrs.get("units", {}).get("t") or "second"
    if unit == "second":
        return f"t = {seconds / 60:g} min" if seconds % 60 == 0 else f"t = {seconds:g} s"
    return f"t = {seconds:g} {unit}"


def _space_unit(image: xr.DataArray) -> str:
    unit = image.attrs.get("units", {}).get("x") or "micrometer"
    return "µm" if unit == "micrometer" else unit


# ---------------------------------------------------------------- Figure 3


def slices_figure(
    input_image: xr.DataArray,
    prediction: xr.DataArray,
    *,
    structures: Sequence[str] | None = None,
    input_channel: str | int = "brightfield",
    t: int = 0,
    z: float | None = None,
) -> Figure:
    """Rows: structures; columns: transmitted-light input, observed target (the input image's channel of
    the same name, where it has one) and prediction, all at the same z (µm) and time.

    Each panel is stretched between its own 0.5th and 99.8th percentiles, as the paper's figures show
    target and prediction (a prediction is an expectation: smoother and dimmer than one noisy target).
    """
    names = _pick_structures(prediction, structures)
    colors = channel_colors(prediction)
    ti = _time_index(prediction, t)
    pred = prediction.isel(t=ti) if "t" in prediction.dims else prediction
    inp = _input_frame(input_image, prediction, ti)
    bf_name = channel_names(input_image)[channel_index(input_image, input_channel, "input (transmitted-light)")]
    if z is None and "z" in pred.dims:
        z = float(pred["z"].values[pred.sizes["z"] // 2])
    unit = _space_unit(prediction)
    input_plane = _plane(inp, bf_name, z=z)
    height = float(abs(_extent(input_plane)[2] - _extent(input_plane)[3]))
    width = float(abs(_extent(input_plane)[1] - _extent(input_plane)[0]))
    panel_w, panel_h = (PANEL_IN, PANEL_IN * height / width) if width >= height else (PANEL_IN * width / height, PANEL_IN)
    fig = Figure(figsize=(3 * panel_w + 0.9, len(names) * panel_h + 0.7), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(len(names), 3, squeeze=False, sharex=True, sharey=True))
    input_names = channel_names(input_image)
    for row, name in enumerate(names):
        panels = [(input_plane, "gray", f"input ({bf_name})")]
        if name in input_names:
            panels.append((_plane(inp, name, z=z), _colormap(colors[name]), "target (observed)"))
        else:
            panels.append((None, None, "target: not in input"))
        panels.append((_plane(pred, name, z=z), _colormap(colors[name]), "prediction"))
        for col, (plane, cmap, title) in enumerate(panels):
            ax = axes[row, col]
            ax.set_facecolor("black")
            if plane is not None:
                values = np.asarray(plane.values, dtype=np.float32)
                lo, hi = _limits(values)
                ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, extent=_extent(plane), interpolation="nearest")
            if row == 0:
                ax.set_title(title, fontsize=8)
            if col == 0:
                add_scale_bar(ax, width, unit)
        axes[row, 0].annotate(
            name, xy=(0, 0.5), xycoords="axes fraction", xytext=(-32, 0), textcoords="offset points",
            rotation=90, va="center", ha="center", fontsize=8, color=colors[name], fontweight="bold",
        )
    _label_outer(axes, f"x ({unit})", f"y ({unit})")
    where = f"z = {z:.2f} {unit}" if z is not None else ""
    fig.suptitle(" · ".join(s for s in (where, _time_label(prediction, ti)) if s), fontsize=8)
    return fig


# ---------------------------------------------------------------- Figure 4b


#: Axis label of each metric :func:`chunked_fnet.evaluate.metrics.image_metrics` reports (panels in ``METRICS`` order).
METRIC_LABELS = {
    "normalized_error": "normalised error (blank = 1)",
    "pearson_r": "Pearson r",
    "ssim": "SSIM",
    "psnr_db": "PSNR (dB)",
    "nrmse": "NRMSE (blank = 1)",
    "fsc_resolution_um": "FSC resolution at 1/7 (µm)",
}
REQUIRED_METRICS = ("normalized_error", "pearson_r")  # older tables hold only these


def read_metrics(path: str | Path) -> list[dict[str, object]]:
    """Rows of a ``metrics.csv`` written by ``chunked-fnet evaluate`` (or the folder holding it); the
    metrics other than the paper's two are read where the table has them (older tables do not)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected the metrics.csv written by chunked-fnet evaluate")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"structure", "split", *REQUIRED_METRICS}
    if not rows or not needed <= set(rows[0]):
        raise InputError(f"{path}: expected a CSV with columns {sorted(needed)} and at least one row")
    metrics = [m for m in METRICS if m in rows[0]]
    out: list[dict[str, object]] = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append({**row, **{m: float(row[m]) for m in metrics}})
        except ValueError as exc:
            raise InputError(f"{path}, line {i}: a metric is not a number ({exc})") from None
    return out


def _metric_axis(ax, metric: str, top: float) -> None:  # noqa: ANN001 - matplotlib Axes
    """Limits and reference lines: correlations end at 1, errors start at 0 with the blank's 1 dashed."""
    if metric in ("pearson_r", "ssim"):
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    elif metric in ("normalized_error", "nrmse"):
        ax.set_ylim(0, max(1.0, top) * 1.08)
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
    else:
        ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)


def metrics_figure(rows: Sequence[Mapping[str, object]], colors: Mapping[str, str] | None = None) -> Figure:
    """Per structure, mean ± s.d. over images of each metric the rows hold (one panel each, in
    :data:`~chunked_fnet.evaluate.metrics.METRICS` order), train (light, hatched) beside test (solid), each image a dot. A
    non-finite value (a perfect image's PSNR, a blank one's Pearson r or FSC resolution) is left out."""
    if not rows:
        raise InputError("no metrics to plot: the table has no rows")
    structures = sorted({str(r["structure"]) for r in rows})
    metrics = [m for m in METRICS if all(m in r for r in rows)]
    colors = dict(colors or {})
    for i, s in enumerate(structures):
        colors.setdefault(s, "#" + FALLBACK_COLORS[i % len(FALLBACK_COLORS)])
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig = Figure(figsize=(ncols * (0.8 + 0.55 * len(structures)) + 0.6, 0.4 + 2.8 * nrows), dpi=DPI, layout="constrained")
    grid = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in grid[len(metrics):]:
        fig.delaxes(ax)
    width = 0.38
    xs = np.arange(len(structures))
    for ax, metric in zip(grid, metrics, strict=False):
        top = 0.0
        for k, split in enumerate(("train", "test")):
            for x, s in zip(xs + (k - 0.5) * width, structures, strict=True):
                values = np.array([float(r[metric]) for r in rows if r["structure"] == s and r["split"] == split])  # type: ignore[arg-type]
                values = values[np.isfinite(values)]
                if values.size == 0:
                    continue
                face = colors[s] if split == "test" else (*to_rgb(colors[s]), 0.35)
                ax.bar(x, values.mean(), width, yerr=values.std(), color=face, edgecolor="0.2", linewidth=0.6,
                       hatch="///" if split == "train" else None, capsize=2, error_kw={"elinewidth": 0.7})
                ax.plot(np.full(values.size, x), values, "k.", ms=2.5)
                top = max(top, float(values.max()))
        ax.set_xticks(xs, structures, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(METRIC_LABELS[metric], fontsize=8)
        ax.set_xlabel("structure", fontsize=8)
        ax.tick_params(labelsize=7)
        _metric_axis(ax, metric, top)
    fig.legend(
        handles=[Patch(facecolor="0.8", edgecolor="0.2", hatch="///", label="train"), Patch(facecolor="0.3", edgecolor="0.2", label="test")],
        frameon=False, fontsize=7, loc="outside upper center", ncols=2,
    )
    return fig


# ---------------------------------------------------------------- Figure 5


def overlay_figure(
    prediction: xr.DataArray,
    input_image: xr.DataArray | None = None,
    *,
    structures: Sequence[str] | None = None,
    input_channel: str | int = "brightfield",
    t: int = 0,
    z: float | None = None,
    y: float | None = None,
) -> Figure:
    """An xy plane (at ``z`` µm) and an xz plane (at ``y`` µm) of every structure merged in its colour,
    beside the transmitted-light input at the same planes when given. Each structure is stretched from
    its median (background) to its 99.8th percentile over the two planes."""
    names = _pick_structures(prediction, structures)
    colors = channel_colors(prediction)
    ti = _time_index(prediction, t)
    frame = prediction.isel(t=ti) if "t" in prediction.dims else prediction
    if z is None:
        z = float(frame["z"].values[frame.sizes["z"] // 2])
    if y is None:
        y = float(frame["y"].values[frame.sizes["y"] // 2])
    xy = {n: np.asarray(_plane(frame, n, z=z).values, dtype=np.float32) for n in names}
    xz = {n: np.asarray(_plane(frame, n, y=y).values, dtype=np.float32) for n in names}
    limits = {n: structure_limits(np.concatenate([xy[n].ravel(), xz[n].ravel()])) for n in names}
    xy_extent = _extent(_plane(frame, names[0], z=z))
    xz_extent = _extent(_plane(frame, names[0], y=y))
    columns: list[tuple[str, np.ndarray, np.ndarray, tuple, tuple, str | None]] = []
    if input_image is not None:
        inp = _input_frame(input_image, prediction, ti)
        bf_name = channel_names(input_image)[channel_index(input_image, input_channel, "input (transmitted-light)")]
        a, b = _plane(inp, bf_name, z=z), _plane(inp, bf_name, y=y)
        columns.append((f"input ({bf_name})", a.values.astype(np.float32), b.values.astype(np.float32), _extent(a), _extent(b), "gray"))
    columns.append(("prediction, merged", merge_colors(xy, colors, limits), merge_colors(xz, colors, limits), xy_extent, xz_extent, None))
    width = abs(xy_extent[1] - xy_extent[0])
    height_xy = abs(xy_extent[2] - xy_extent[3])
    height_xz = abs(xz_extent[2] - xz_extent[3])
    unit = _space_unit(prediction)
    fig = Figure(figsize=(len(columns) * 3.0 + 0.8, 3.0 * (height_xy + height_xz) / width + 1.1), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(2, len(columns), squeeze=False, sharex=True, height_ratios=[height_xy, height_xz]))
    for col, (title, top, bottom, ext_top, ext_bottom, cmap) in enumerate(columns):
        for row, (image, ext) in enumerate(((top, ext_top), (bottom, ext_bottom))):
            ax = axes[row, col]
            ax.set_facecolor("black")
            origin = "upper" if row == 0 else "lower"  # xz: z up
            if cmap is None:
                ax.imshow(image, extent=ext, interpolation="nearest", origin=origin)
            else:
                lo, hi = _limits(image)
                ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, extent=ext, interpolation="nearest", origin=origin)
            ax.set_aspect("equal")
        axes[0, col].set_title(title, fontsize=8)
        add_scale_bar(axes[0, col], width, unit)
        axes[0, col].axhline(y, color="white", lw=0.5, ls=":")
    _label_outer(axes, f"x ({unit})", f"y ({unit})")
    axes[1, 0].set_ylabel(f"z ({unit})", fontsize=7)
    _legend(fig, names, colors, min(len(names), 4))
    fig.suptitle(f"xy at z = {z:.2f} {unit}, xz at y = {y:.2f} {unit} (dotted)  ·  {_time_label(prediction, ti)}", fontsize=8)
    return fig


# ---------------------------------------------------------------- Figure 6


def _frames(prediction: xr.DataArray, times: Sequence[int] | None, max_frames: int) -> list[int]:
    n = prediction.sizes.get("t", 1)
    if times:
        return [_time_index(prediction, t) for t in times]
    if n <= max_frames:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_frames)})


def _timelapse_planes(
    prediction: xr.DataArray, names: Sequence[str], frames: Sequence[int], z: float | None
) -> tuple[list[dict[str, np.ndarray]], dict[str, tuple[float, float]], float, tuple]:
    first = prediction.isel(t=frames[0]) if "t" in prediction.dims else prediction
    if z is None:
        z = float(first["z"].values[first.sizes["z"] // 2])
    planes = []
    for ti in frames:
        frame = prediction.isel(t=ti) if "t" in prediction.dims else prediction
        planes.append({n: np.asarray(_plane(frame, n, z=z).values, dtype=np.float32) for n in names})
    # one stretch per structure for the whole series: brightness changes over time stay visible
    limits = {n: structure_limits(np.concatenate([p[n].ravel() for p in planes])) for n in names}
    return planes, limits, z, _extent(_plane(first, names[0], z=z))


def timelapse_figure(
    prediction: xr.DataArray,
    input_image: xr.DataArray | None = None,
    *,
    structures: Sequence[str] | None = None,
    input_channel: str | int = "brightfield",
    z: float | None = None,
    times: Sequence[int] | None = None,
    max_frames: int = 6,
) -> Figure:
    """A montage: one column per time point (evenly spaced, at most ``max_frames``), the merged
    prediction at ``z`` µm, under the transmitted-light input at the same plane when given."""
    names = _pick_structures(prediction, structures)
    colors = channel_colors(prediction)
    frames = _frames(prediction, times, max_frames)
    planes, limits, z, extent = _timelapse_planes(prediction, names, frames, z)
    rows = 2 if input_image is not None else 1
    width = abs(extent[1] - extent[0])
    height = abs(extent[2] - extent[3])
    unit = _space_unit(prediction)
    panel = 2.0
    fig = Figure(figsize=(len(frames) * panel + 0.8, rows * panel * height / width + 1.0), dpi=DPI, layout="constrained")
    axes = np.asarray(fig.subplots(rows, len(frames), squeeze=False, sharex=True, sharey=True))
    bf_name: str | None = None
    bf_planes: list[tuple[np.ndarray, tuple]] = []
    if input_image is not None:
        bf_name = channel_names(input_image)[channel_index(input_image, input_channel, "input (transmitted-light)")]
        for ti in frames:
            p = _plane(_input_frame(input_image, prediction, ti), bf_name, z=z)
            bf_planes.append((np.asarray(p.values, dtype=np.float32), _extent(p)))
    bf_limits = _limits(np.concatenate([v.ravel() for v, _ in bf_planes])) if bf_planes else None
    for col, ti in enumerate(frames):
        row = 0
        if bf_planes:
            values, ext = bf_planes[col]
            axes[0, col].imshow(values, cmap="gray", vmin=bf_limits[0], vmax=bf_limits[1], extent=ext, interpolation="nearest")  # type: ignore[index]
            row = 1
        axes[row, col].imshow(merge_colors(planes[col], colors, limits), extent=extent, interpolation="nearest")
        axes[0, col].set_title(_time_label(prediction, ti), fontsize=8)
        for r in range(rows):
            axes[r, col].set_facecolor("black")
    add_scale_bar(axes[0, 0], width, unit)
    _label_outer(axes, f"x ({unit})", f"y ({unit})")
    if bf_planes:
        axes[0, 0].set_ylabel(f"input ({bf_name})\ny ({unit})", fontsize=7)
        axes[1, 0].set_ylabel(f"prediction\ny ({unit})", fontsize=7)
    _legend(fig, names, colors, min(len(names), 6))
    fig.suptitle(f"merged prediction over time at z = {z:.2f} {unit}", fontsize=8)
    return fig


def timelapse_gif(
    prediction: xr.DataArray,
    path: str | Path,
    *,
    structures: Sequence[str] | None = None,
    z: float | None = None,
    fps: float = 2.0,
    overwrite: bool = False,
) -> Path:
    """An animated GIF of the merged prediction over every time point (one stretch for all frames)."""
    from PIL import Image, ImageDraw

    path = check_output(path, (".gif",), overwrite)
    names = _pick_structures(prediction, structures)
    frames = list(range(prediction.sizes.get("t", 1)))
    planes, limits, z, _ = _timelapse_planes(prediction, names, frames, z)
    colors = channel_colors(prediction)
    images = []
    for ti, plane in zip(frames, planes, strict=True):
        rgb = (merge_colors(plane, colors, limits) * 255).astype(np.uint8)
        scale = max(1, 256 // max(rgb.shape[:2]))
        image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
        ImageDraw.Draw(image).text((4, 4), _time_label(prediction, ti), fill=(255, 255, 255))
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


# ---------------------------------------------------------------- saving


def check_output(path: str | Path, suffixes: Sequence[str], overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; expected a file name for the figure")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Figure, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``fig`` as a PNG; an existing file is kept unless ``overwrite``."""
    path = check_output(path, (".png",), overwrite)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path
