"""neuroglancer view: the store server (127.0.0.1, CORS, ranges), the viewer state, the command, and the
real thing: neuroglancer's own client in headless Chromium loading the written OME-Zarr as is."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from chunked_fnet import open_image
from chunked_fnet.errors import ChunkedFnetError
from chunked_fnet.synth.dataset import CHANNEL_COLORS
from chunked_fnet.viz.neuroglancer import INPUT_OPACITY, build_state, describe_source, open_view
from chunked_fnet.viz.serve import StoreServer, parse_range
from browser import Chromium, all_loaded, find_chromium, layer_problems, wait_for_neuroglancer
from viz_data import ORIGIN, PREDICTION_SHARDS, STRUCTURES, VizData, shared_prediction

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CHUNKED_FNET_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> VizData:
    return shared_prediction(tmp_path_factory)


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None, raw_path: str | None = None):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, raw_path or parts.path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def test_range_header_parsing() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-5", 10) == (2, 5)
    assert parse_range("bytes=4-", 10) == (4, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=8-100", 10) == (8, 9)
    assert parse_range("bytes=10-12", 10) == "unsatisfiable"
    assert parse_range("bytes=0-1,4-5", 10) is None  # several ranges: the whole file
    assert parse_range("items=0-1", 10) is None


def test_store_server_is_loopback_only_read_only_with_cors_and_ranges(tmp_path: Path) -> None:
    store = tmp_path / "a.zarr"
    (store / "0").mkdir(parents=True)
    (store / "zarr.json").write_text('{"zarr_format": 3}')
    (store / "0" / "c").write_bytes(bytes(range(100)))
    (tmp_path / "secret.txt").write_text("not served")
    with StoreServer({"a": store}) as server:
        assert server._server.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
        r, body = _request(server.url_for("a") + "zarr.json")
        assert r.status == 200 and body == b'{"zarr_format": 3}'
        assert r.getheader("Access-Control-Allow-Origin") == "*" and r.getheader("Content-Type") == "application/json"
        r, body = _request(server.url_for("a") + "0/c", headers={"Range": "bytes=10-19"})
        assert r.status == 206 and body == bytes(range(10, 20))
        assert r.getheader("Content-Range") == "bytes 10-19/100" and r.getheader("Accept-Ranges") == "bytes"
        assert "Content-Range" in r.getheader("Access-Control-Expose-Headers")
        r, body = _request(server.url_for("a") + "0/c", headers={"Range": "bytes=-5"})
        assert r.status == 206 and body == bytes(range(95, 100))
        r, _ = _request(server.url_for("a") + "0/c", headers={"Range": "bytes=200-"})
        assert r.status == 416 and r.getheader("Content-Range") == "bytes */100"
        r, body = _request(server.url_for("a") + "0/c", method="HEAD")
        assert r.status == 200 and r.getheader("Content-Length") == "100" and body == b""
        # a cross-origin preflight from a page on the public internet (Chrome's private network access)
        r, _ = _request(
            server.url_for("a") + "0/c", method="OPTIONS",
            headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "range", "Access-Control-Request-Private-Network": "true"},
        )
        assert r.status == 204 and r.getheader("Access-Control-Allow-Private-Network") == "true"
        assert "Range" in r.getheader("Access-Control-Allow-Headers")
        # nothing outside the store, no listings, no writes
        for path in ("/a/../secret.txt", "/a/%2e%2e/secret.txt", "/a/", "/a/0", "/b/zarr.json", "/secret.txt"):
            r, _ = _request(server.url, raw_path=path)
            assert r.status == 404, path
        r, _ = _request(server.url_for("a") + "new", method="PUT")
        assert r.status == 501 and not (store / "new").exists()
    with pytest.raises(ChunkedFnetError, match="not a folder; expected a local OME-Zarr store"):
        StoreServer({"x": tmp_path / "missing.zarr"})


def test_state_has_grey_input_and_coloured_additive_structures(data: VizData) -> None:
    pred = describe_source(data.prediction, "http://127.0.0.1:1/prediction/")
    inp = describe_source(data.input, "http://127.0.0.1:1/input/")
    assert pred.source.startswith("zarr3://") and inp.source.startswith("zarr2://")  # NGFF 0.5 in zarr v3, 0.4 in v2
    state = build_state(pred, inp).to_json()
    layers = state["layers"]
    assert [layer["name"] for layer in layers] == ["input: brightfield", *STRUCTURES]
    assert layers[0]["source"] == [{"url": "zarr2://http://127.0.0.1:1/input/"}] and layers[0]["localPosition"] == [0]
    assert "emitGrayscale" in layers[0]["shader"] and layers[0]["opacity"] == INPUT_OPACITY
    for index, (layer, structure) in enumerate(zip(layers[1:], STRUCTURES, strict=True)):
        assert layer["source"] == [{"url": "zarr3://http://127.0.0.1:1/prediction/"}] and layer["localPosition"] == [index]
        assert layer["blend"] == "additive"
        assert f'default="#{CHANNEL_COLORS[structure].lower()}"' in layer["shader"]  # the model card's colour
        # display range from the data: the structure's median (background) to its 99.8th percentile
        plane = open_image(data.prediction).isel(t=0, z=6).sel(c=structure).values
        lo, hi = np.percentile(plane, [50, 99.8])
        assert f"range=[{lo:.6g}, {hi:.6g}]" in layer["shader"]
    file_state = build_state(pred, inp, contrast="file").to_json()
    assert "range=[-1, 4]" in file_state["layers"][1]["shader"]  # the omero window predict wrote
    assert state["dimensions"] == {"x": [2e-07, "m"], "y": [2e-07, "m"], "z": [4e-07, "m"], "t": [300.0, "s"]}
    # centred on the prediction (which starts at the input's origin) at its first frame
    x_lo, x_hi = pred.extent("x")
    assert state["position"][0] * 0.2 == pytest.approx((x_lo + x_hi) / 2) and x_lo == pytest.approx(ORIGIN["x"] - 0.2)
    assert state["position"][3] == pytest.approx(0.5)


def test_view_refuses_what_neuroglancer_could_not_show(data: VizData, tmp_path: Path) -> None:
    with pytest.raises(ChunkedFnetError, match=r"no transmitted-light channel named 'phase'; channels are \['brightfield'"):
        open_view(data.prediction, data.input, input_channel="phase")
    with pytest.raises(ChunkedFnetError, match=r"missing.zarr: no such file or directory \(expected an OME-Zarr image\)"):
        open_view(tmp_path / "missing.zarr")
    # an "input" that lies elsewhere in space is not this prediction's input
    other = tmp_path / "other.zarr"
    from chunked_fnet import create_image

    create_image(other, shape=(1, 1, 4, 8, 8), scale={"z": 1, "y": 1, "x": 1}, translation={"x": 500.0}, channel_names=["brightfield"])
    with pytest.raises(ChunkedFnetError, match=r"other.zarr does not overlap .*prediction.zarr in x"):
        open_view(data.prediction, other)


def test_cli_view_serves_prints_urls_and_stops_on_ctrl_c(data: VizData) -> None:
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "view", str(data.prediction), "--input", str(data.input), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("press Ctrl-C"):
                break
        out = "\n".join(lines)
        assert "press Ctrl-C to stop" in out, out + proc.stderr.read() if proc.poll() is not None else out
        assert "layer 'input: brightfield'" in out and "layer 'dna'" in out and "layer 'er'" in out
        served = next(line.split(" at ")[1].split()[0] for line in lines if line.startswith("serving the stores at"))
        viewer = next(line.split(": ", 1)[1] for line in lines if line.startswith("neuroglancer viewer:"))
        state_url = next(line.split(": ", 1)[1] for line in lines if line.startswith("neuroglancer state URL"))
        assert served.startswith("http://127.0.0.1:") and viewer.startswith("http://127.0.0.1:")
        r, body = _request(served + "/prediction/zarr.json", headers={"Range": "bytes=0-9"})
        assert r.status == 206 and len(body) == 10
        state = json.loads(urllib.parse.unquote(state_url.split("#!", 1)[1]))
        assert [layer["name"] for layer in state["layers"]] == ["input: brightfield", *STRUCTURES]
        assert state["layers"][1]["source"][0]["url"] == f"zarr3://{served}/prediction/"
        # every socket this command listens on is on loopback (the store server and neuroglancer's)
        listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert len(listening) >= 2 and {c.laddr.ip for c in listening} == {"127.0.0.1"}
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=120)  # generous: one CI run on a loaded 2-core machine needed over 30 s here
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"view did not stop within 120 s of Ctrl-C; stderr: {proc.communicate()[1][-2000:]}")
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the real browser


def _panel_pixels(png: bytes, panel: list[float]) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    left, top, width, height = (int(round(v)) for v in panel)
    return image[top + 2 : top + height - 2, left + 2 : left + width - 2]


def test_neuroglancer_loads_every_layer_in_headless_chromium(data: VizData) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it where apt-get works")
    pred = describe_source(data.prediction, "")
    inp = describe_source(data.input, "")
    assert zarr.open_array(data.prediction / "0", mode="r").shards == (1, 1, *PREDICTION_SHARDS)  # neuroglancer reads shards
    with open_view(data.prediction, data.input) as session, Chromium(binary) as chrome:
        chrome.navigate(session.viewer_url)
        status = wait_for_neuroglancer(chrome, timeout=90)
        assert [layer["name"] for layer in status["layers"]] == ["input: brightfield", *STRUCTURES]
        assert layer_problems(status) == []
        for layer in status["layers"]:
            assert [s["state"] for s in layer["sources"]] == ["loaded"] and layer["renderLayers"] >= 1, layer
            # where neuroglancer put the layer (from the OME metadata) is where our reader says it is
            source = layer["sources"][0]
            image = inp if layer["name"].startswith("input") else pred
            for dim in ("z", "y", "x", "t"):
                i = source["names"].index(dim)
                lo, hi = source["lower"][i] * source["scales"][i], source["upper"][i] * source["scales"][i]
                factor = 1.0 if dim == "t" else 1e-6
                assert (lo, hi) == pytest.approx(tuple(v * factor for v in image.extent(dim)), rel=1e-6, abs=1e-12), (layer["name"], dim)
        # chunks really came from our server
        requests = session.server.requests
        chunk_reads = [(p, s) for m, p, s in requests if m == "GET" and "/0/" in p and s in (200, 206)]
        assert any(p.startswith("/prediction/") for p, _ in chunk_reads) and any(p.startswith("/input/") for p, _ in chunk_reads)
        assert not [r for r in requests if r[2] >= 500]
        time.sleep(0.5)  # one more frame after the last chunk arrived
        png = chrome.screenshot()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "neuroglancer_headless.png").write_bytes(png)
        xy = _panel_pixels(png, status["panels"][0])
        assert xy.size and xy.std() > 5 and xy.mean() > 10, "the xy panel is blank"
        # the predicted structures on their own: coloured (not grey) and not blank
        with session.viewer.txn() as s:
            s.layers["input: brightfield"].visible = False
        status = wait_for_neuroglancer(chrome, lambda st: not st["layers"][0]["visible"] and all_loaded(st), 30, "the input hidden")
        time.sleep(0.5)
        png = chrome.screenshot()
        (ARTIFACTS / "neuroglancer_headless_predictions.png").write_bytes(png)
        xy = _panel_pixels(png, status["panels"][0])
        assert xy.std() > 1 and xy.mean() > 5, "the predicted layers drew nothing"
        assert (xy.max(axis=-1) - xy.min(axis=-1)).mean() > 3, "the predicted layers are not coloured"
        assert not [m for m in chrome.console if "error" in m.lower()], chrome.console
