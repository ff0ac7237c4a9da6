"""Figures from a real (tiny) prediction: physical placement, scale bars, the model cards' colours,
what each panel shows, and PNGs from the command line that are never silently overwritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from PIL import Image

from chunked_fnet import open_image
from chunked_fnet.cli import main as cli
from chunked_fnet.errors import InputError
from chunked_fnet.synth.dataset import CHANNEL_COLORS
from chunked_fnet.viz import figures
from viz_data import ORIGIN, STRUCTURES, VizData, shared_prediction


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> VizData:
    return shared_prediction(tmp_path_factory)


def _scale_bars(ax) -> list[str]:  # noqa: ANN001
    return [a.txt_label.get_text() for a in ax.artists if isinstance(a, AnchoredSizeBar)]


def _png(path: Path) -> np.ndarray:
    assert path.stat().st_size < 300_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_slices_figure_shows_input_target_prediction_at_one_physical_plane(data: VizData) -> None:
    pred, image = open_image(data.prediction), open_image(data.input)
    fig = figures.slices_figure(image, pred, t=1)
    axes = np.array(fig.axes).reshape(len(STRUCTURES), 3)
    assert [ax.get_title() for ax in axes[0]] == ["input (brightfield)", "target (observed)", "prediction"]
    z = float(pred["z"].values[pred.sizes["z"] // 2])
    for row, structure in enumerate(STRUCTURES):
        bf, target, prediction = (ax.images[0] for ax in axes[row])
        # what is drawn is the stored data at that plane and time, on each image's own grid
        expected_pred = pred.isel(t=1).sel(c=structure).sel(z=z, method="nearest").values
        np.testing.assert_array_equal(prediction.get_array(), expected_pred)
        frame = image.sel(t=float(pred["t"].values[1]), method="nearest").sel(z=z, method="nearest")
        np.testing.assert_array_equal(target.get_array(), frame.sel(c=structure).values)
        np.testing.assert_array_equal(bf.get_array(), frame.sel(c="brightfield").values)
        # placed in µm, voxel edges included: the input's origin moved to ORIGIN, its y/x voxel is 0.2 µm
        left, right, bottom, top = bf.get_extent()
        assert left == pytest.approx(ORIGIN["x"] - 0.1) and top == pytest.approx(ORIGIN["y"] - 0.1)
        assert right == pytest.approx(ORIGIN["x"] + 64 * 0.2 - 0.1)
        left, _, _, top = prediction.get_extent()  # model grid: 0.4 µm, starting on the input's first voxel centre
        assert left == pytest.approx(ORIGIN["x"] - 0.2) and top == pytest.approx(ORIGIN["y"] - 0.2)
        # the card's colour: black -> colour
        assert prediction.get_cmap()(1.0)[:3] == pytest.approx(to_rgb("#" + CHANNEL_COLORS[structure]))
        assert _scale_bars(axes[row, 0]) == ["2 µm"]
    assert axes[-1, 0].get_xlabel() == "x (µm)" and axes[0, 0].get_ylabel() == "y (µm)"
    assert "t = 5 min" in fig.get_suptitle() and f"z = {z:.2f} µm" in fig.get_suptitle()


def test_overlay_merges_structures_additively_in_their_colours(data: VizData) -> None:
    pred = open_image(data.prediction)
    fig = figures.overlay_figure(pred, open_image(data.input))
    (bf_xy, merged_xy), (bf_xz, merged_xz) = np.array(fig.axes[:4]).reshape(2, 2)
    frame = pred.isel(t=0)
    z = float(frame["z"].values[frame.sizes["z"] // 2])
    planes = {s: frame.sel(c=s).sel(z=z, method="nearest").values for s in STRUCTURES}
    xz = {s: frame.sel(c=s).sel(y=float(frame["y"].values[frame.sizes["y"] // 2]), method="nearest").values for s in STRUCTURES}
    both = {s: np.concatenate([planes[s].ravel(), xz[s].ravel()]) for s in STRUCTURES}
    limits = {s: tuple(np.percentile(both[s], [50, 99.8])) for s in STRUCTURES}  # background (median) is black
    rgb = merged_xy.images[0].get_array()
    assert rgb.shape == (*planes["dna"].shape, 3)
    colors = {s: np.array(to_rgb("#" + CHANNEL_COLORS[s])) for s in STRUCTURES}
    expected = sum(np.clip((planes[s] - limits[s][0]) / (limits[s][1] - limits[s][0]), 0, 1)[..., None] * colors[s] for s in STRUCTURES)
    np.testing.assert_allclose(rgb, np.clip(expected, 0, 1), atol=1e-6)
    assert np.ptp(rgb) > 0.3  # a real, varied prediction, not a blank
    # side view: z runs up from the prediction's first plane (the input's origin, 1.2 µm)
    _, _, bottom, top = merged_xz.images[0].get_extent()
    assert bottom == pytest.approx(ORIGIN["z"] - 0.2) and top == pytest.approx(ORIGIN["z"] + 12 * 0.4 - 0.2)
    assert merged_xz.get_ylabel() == "" and bf_xz.get_ylabel() == "z (µm)" and bf_xz.get_xlabel() == "x (µm)"
    assert _scale_bars(bf_xy) == ["2 µm"] and _scale_bars(merged_xy) == ["2 µm"]
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(STRUCTURES)
    assert [tuple(h.get_facecolor()[:3]) for h in legend.legend_handles] == [pytest.approx(tuple(colors[s])) for s in STRUCTURES]


def test_timelapse_montage_keeps_one_stretch_over_time(data: VizData, tmp_path: Path) -> None:
    pred = open_image(data.prediction)
    fig = figures.timelapse_figure(pred, open_image(data.input))
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["t = 0 min", "t = 5 min", "t = 10 min"]
    frames = [ax.images[0].get_array() for ax in axes[1]]
    assert all(f.shape == (*pred.shape[-2:], 3) for f in frames)
    assert not np.allclose(frames[0], frames[2])  # the cells move
    assert axes[1, 0].get_ylabel() == "prediction\ny (µm)" and _scale_bars(axes[0, 0]) == ["2 µm"]
    gif = figures.timelapse_gif(pred, tmp_path / "movie.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 3


def test_metrics_figure_from_a_real_evaluation(data: VizData) -> None:
    rows = figures.read_metrics(data.metrics)
    assert {(r["structure"], r["split"]) for r in rows} == {(s, split) for s in STRUCTURES for split in ("train", "test")}
    fig = figures.metrics_figure(rows, figures.channel_colors(open_image(data.prediction)))
    error_ax, r_ax = fig.axes[:2]
    assert error_ax.get_ylabel() == "normalised error (blank = 1)" and r_ax.get_ylabel() == "Pearson r"
    for ax, metric in ((error_ax, "normalized_error"), (r_ax, "pearson_r")):
        bars = ax.patches
        assert len(bars) == 4  # 2 structures x train/test
        heights = sorted(b.get_height() for b in bars)
        means = sorted(
            float(np.mean([r[metric] for r in rows if r["structure"] == s and r["split"] == split]))
            for s in STRUCTURES for split in ("train", "test")
        )
        assert heights == pytest.approx(means, abs=1e-5)  # metrics.csv keeps 6 significant digits
        solid = {tuple(np.round(b.get_facecolor()[:3], 4)) for b in bars if b.get_facecolor()[3] == 1}
        assert solid == {tuple(np.round(to_rgb("#" + CHANNEL_COLORS[s]), 4)) for s in STRUCTURES}  # test bars


def test_figure_commands_write_pngs_and_never_overwrite(data: VizData, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, inp = str(data.prediction), str(data.input)
    commands = {
        "fig3.png": ["figure", "slices", pred, "--input", inp],
        "fig4b.png": ["figure", "metrics", str(data.metrics), "--colors-from", pred],
        "fig5.png": ["figure", "overlay", pred, "--input", inp],
        "fig6.png": ["figure", "timelapse", pred, "--input", inp, "--gif", str(tmp_path / "fig6.gif")],
    }
    for name, args in commands.items():
        out = tmp_path / name
        assert cli([*args, "--out", str(out)]) == 0
        pixels = _png(out)
        assert pixels.std() > 20 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert (tmp_path / "fig6.gif").exists()
    before = (tmp_path / "fig3.png").read_bytes()
    capsys.readouterr()
    assert cli([*commands["fig3.png"], "--out", str(tmp_path / "fig3.png"), "--structures", "er"]) == 2
    assert "fig3.png already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "fig3.png").read_bytes() == before
    assert cli([*commands["fig3.png"], "--out", str(tmp_path / "fig3.png"), "--structures", "er", "--overwrite"]) == 0
    assert (tmp_path / "fig3.png").read_bytes() != before
    # a GIF that exists is refused before the PNG is written
    assert cli([*commands["fig6.png"], "--out", str(tmp_path / "other.png")]) == 2
    assert not (tmp_path / "other.png").exists()


def test_figure_errors_name_the_file_and_what_was_expected(data: VizData, tmp_path: Path) -> None:
    pred = open_image(data.prediction)
    with pytest.raises(InputError, match=r"prediction.zarr: no predicted structure\(s\) \['mitochondria'\]; it holds \['dna', 'er'\]"):
        figures.overlay_figure(pred, structures=["mitochondria"])
    with pytest.raises(InputError, match=r"prediction.zarr: time index 7 is out of range; the image has 3 time point\(s\)"):
        figures.overlay_figure(pred, t=7)
    with pytest.raises(InputError, match=r"x.jpg: expected a file name ending in .png"):
        figures.save_figure(figures.overlay_figure(pred), tmp_path / "x.jpg")
    bad = tmp_path / "metrics.csv"
    bad.write_text("structure,split\ndna,test\n")
    with pytest.raises(InputError, match=r"metrics.csv: expected a CSV with columns"):
        figures.read_metrics(bad)
    with pytest.raises(Exception, match=r"no (transmitted-light|input).*channel named 'phase'"):
        figures.slices_figure(open_image(data.input), pred, input_channel="phase")


def test_report_figure_shows_every_metric_of_every_structure_train_and_test(tmp_path: Path) -> None:
    """write_report's metrics.png (from rows like evaluate_run's) has one panel per metric, each with a
    train and a test bar per structure; non-finite values (a perfect PSNR) are left out, not plotted as inf."""
    from chunked_fnet.evaluate.metrics import METRICS
    from chunked_fnet.evaluate.report import FIELDS, summarize, write_report

    rng = np.random.default_rng(0)
    structures = ["dna", "er", "membrane"]
    rows = [
        {"structure": s, "split": split, "image": f"{s}{i}", **{m: float(rng.uniform(0.2, 0.9)) for m in METRICS}}
        for s in structures for split in ("train", "test") for i in range(3)
    ]
    rows[0]["psnr_db"] = float("inf")
    table, png = write_report(rows, tmp_path / "eval")
    assert table.read_text().splitlines()[0] == ",".join(FIELDS) and "inf" in table.read_text()
    assert _png(png).std() > 20
    back = figures.read_metrics(table)
    assert [back[0][m] for m in METRICS] == pytest.approx([rows[0][m] for m in METRICS], rel=1e-5)
    fig = figures.metrics_figure(back)
    assert [ax.get_ylabel() for ax in fig.axes] == [figures.METRIC_LABELS[m] for m in METRICS]
    for ax, metric in zip(fig.axes, METRICS, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == structures
        assert len(ax.patches) == 2 * len(structures)  # a train and a test bar per structure
        assert all(np.isfinite(b.get_height()) for b in ax.patches)
    finite = [r["psnr_db"] for r in rows[1:3]]
    assert summarize(rows)[("dna", "train")]["psnr_db"] == pytest.approx(np.mean(finite))
    unresolved = [{**r, "fsc_resolution_um": float("inf")} for r in rows if r["structure"] == "er"]
    assert summarize(unresolved)[("er", "test")]["fsc_resolution_um"] == np.inf  # every image unresolved: inf, not NaN
    # a table from before the new metrics still draws its two panels
    old = tmp_path / "old.csv"
    old.write_text("structure,split,image,normalized_error,pearson_r\ndna,test,a,0.3,0.8\ndna,train,b,0.2,0.9\n")
    assert [ax.get_ylabel() for ax in figures.metrics_figure(figures.read_metrics(old)).axes] == [figures.METRIC_LABELS[m] for m in METRICS[:2]]
