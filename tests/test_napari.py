"""The written OME-Zarr opens in napari through napari-ome-zarr as it is: one layer per channel, named
and coloured as the metadata says, at its physical scale and position, in both NGFF versions.

napari's ``ViewerModel`` is the viewer without its Qt window: the same reader plugin and layer
construction as the GUI, and no display needed.

Known reader gap: napari-ome-zarr 0.10 (the last release for Python 3.11) applies only the first of a
dataset's coordinate transformations, the scale, and drops the translation that NGFF puts after it,
so napari shows every image at the origin. A prediction and its input share one origin, so they
still overlay each other; neuroglancer and chunked_fnet's reader place both at the real origin.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from matplotlib.colors import to_rgb

from chunked_fnet import open_image
from chunked_fnet.synth.dataset import CHANNEL_COLORS
from viz_data import ORIGIN, PREDICTION_SHARDS, STRUCTURES, VizData, shared_prediction

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # npe2's pydantic-v1 style fields
napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[test]')")
pytest.importorskip("napari_ome_zarr", reason="napari-ome-zarr is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> VizData:
    return shared_prediction(tmp_path_factory)


@pytest.fixture(scope="module")
def viewer():
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # what napari's GUI does at start: discover the installed reader plugins
    return ViewerModel()


def _world_corner(layer) -> np.ndarray:  # noqa: ANN001
    """World coordinates of the centre of the layer's first voxel."""
    return np.asarray(layer.data_to_world(np.zeros(layer.ndim)))


def _origin_as_read(corner: np.ndarray) -> None:
    """The real origin, or the origin napari-ome-zarr 0.10 reports after dropping the translation."""
    real = [ORIGIN["z"], ORIGIN["y"], ORIGIN["x"]]
    assert np.allclose(corner[1:], real) or np.allclose(corner[1:], 0.0), corner


def test_prediction_opens_with_channel_names_colours_and_display_ranges(data: VizData, viewer) -> None:  # noqa: ANN001
    assert zarr.open_array(data.prediction / "0", mode="r").shards == (1, 1, *PREDICTION_SHARDS)  # napari reads shards
    layers = viewer.open(str(data.prediction), plugin="napari-ome-zarr")
    prediction = open_image(data.prediction)
    assert [layer.name.rsplit(": ", 1)[1] for layer in layers] == list(STRUCTURES)
    for layer, structure in zip(layers, STRUCTURES, strict=True):
        assert layer.colormap.colors[-1][:3] == pytest.approx(to_rgb("#" + CHANNEL_COLORS[structure]), abs=1e-6)
        assert layer.colormap.colors[0][:3] == pytest.approx((0, 0, 0))
        assert list(layer.contrast_limits) == [-1.0, 4.0]  # the omero window predict wrote
        assert layer.axis_labels == ("t", "z", "y", "x")
        assert [str(u) for u in layer.units] == ["second", "micrometer", "micrometer", "micrometer"]
        assert list(layer.scale) == pytest.approx([300.0, 0.4, 0.4, 0.4])
        _origin_as_read(_world_corner(layer))
        values = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        np.testing.assert_array_equal(values[1], prediction.sel(c=structure).isel(t=1).values)
    assert layers[-1].blending == "additive"


def test_input_opens_in_the_same_world_as_its_prediction(data: VizData, viewer) -> None:  # noqa: ANN001
    layers = {layer.name.rsplit(": ", 1)[1]: layer for layer in viewer.open(str(data.input), plugin="napari-ome-zarr")}
    assert list(layers) == ["brightfield", "dna", "nuclear_envelope", "nucleoli", "membrane", "mitochondria", "er"]
    assert layers["brightfield"].colormap.name == "gray"
    bf = layers["brightfield"]
    assert list(bf.scale) == pytest.approx([300.0, 0.4, 0.2, 0.2])  # NGFF 0.4 (zarr v2), on the input's grid
    pred = viewer.layers[0]
    _origin_as_read(_world_corner(bf))
    # the prediction starts on the input's first voxel centre: the two overlay in napari's world
    np.testing.assert_allclose(_world_corner(pred), _world_corner(bf), atol=1e-9)
    lo_in, hi_in = np.asarray(bf.extent.world)
    lo_pred, hi_pred = np.asarray(pred.extent.world)
    assert np.all(lo_pred[1:] >= lo_in[1:] - 0.2 - 1e-9) and np.all(hi_pred[1:] <= hi_in[1:] + 0.2 + 1e-9)
