"""Object storage in and out: ``s3://`` input and output against a real S3 server (moto's, on 127.0.0.1,
``tests/s3_fixture.py``), credentials and endpoint from the AWS environment variables only; and
``http://`` stores read by ``info`` and ``figure``.

What a user relies on: an ``s3://`` -> ``s3://`` prediction equals a local one; its run record and
chunk markers live on the object store, so a killed client resumes there and recomputes only the
missing chunks; no credential is ever printed or written; ``info``, ``figure`` and ``view`` take the URLs.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from dask_cli import cli_cluster
from factories import tiny_checkpoint

BUCKET = "chunked-fnet-test"
# the prediction on the store is sharded (an object per 8x48x48 shard: 2 a frame and structure), the killed-and-resumed one is not
FLAGS = ["--patch", "8", "16", "16", "--chunks", "8", "16", "16", "--overlap", "0.25", "--precision", "fp32", "--shards", "8", "48", "48", "--no-progress"]
FINE = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--overlap", "0.25", "--precision", "fp32", "--shards", "none", "--no-progress"]
TOTAL = 3 * 2 * 1 * 1  # time points x shards along z, y, x at FLAGS' shards
TOTAL_FINE = 3 * 3 * 5 * 5


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a subprocess that finds the server only through the inherited AWS variables."""
    return subprocess.run([sys.executable, "-m", "chunked_fnet", *args], capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture(scope="module")
def data(s3, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small input written locally and uploaded, two tiny models, and the local reference prediction."""
    root = tmp_path_factory.mktemp("s3")
    generate(SynthConfig(size_t=3, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / "dna.ckpt", "dna", seed=0, color="0000FF"), tiny_checkpoint(root / "er.ckpt", "er", seed=1, color="00FF00")]
    options = PredictOptions(patch_shape=(8, 16, 16), chunks=(8, 16, 16), overlap=0.25, precision="fp32")
    reference, _ = predict(root / "in.zarr", models, root / "reference.zarr", options=options, progress=False)
    s3.bucket(BUCKET)
    fs = s3.fs()
    fs.put(str(root / "in.zarr"), f"{BUCKET}/in.zarr", recursive=True)
    assert fs.exists(f"{BUCKET}/in.zarr/zarr.json") or fs.exists(f"{BUCKET}/in.zarr/.zattrs"), fs.find(BUCKET)
    return {"root": root, "input": f"s3://{BUCKET}/in.zarr", "models": [str(m) for m in models], "reference": reference.values}


@pytest.fixture(scope="module")
def s3_run(data) -> subprocess.CompletedProcess:
    """``chunked-fnet predict s3://.../in.zarr --out s3://.../out.zarr`` on a local cluster of one worker process."""
    result = _cli("predict", data["input"], "--models", *data["models"], "--out", f"s3://{BUCKET}/out.zarr", "--workers", "1", *FLAGS)
    assert result.returncode == 0, result.stderr
    return result


def _done(fs, output: str) -> int:
    fs.invalidate_cache()
    try:
        return len(fs.ls(f"{output}/.chunked_fnet/done", detail=False))
    except FileNotFoundError:
        return 0


def test_the_server_listens_on_the_loopback_address_only(s3) -> None:
    listening = s3.listening()
    assert listening and all(ip == "127.0.0.1" for ip, _ in listening), listening


def test_s3_to_s3_prediction_equals_a_local_run_and_keeps_its_record_on_the_store(s3, data, s3_run) -> None:
    assert f"wrote s3://{BUCKET}/out.zarr: {TOTAL} chunk tasks" in s3_run.stdout, s3_run.stdout
    out = open_image(f"s3://{BUCKET}/out.zarr")
    assert out.shape == (3, 2, 9, 40, 36) and list(out["c"].values) == ["dna", "er"]
    np.testing.assert_allclose(out.values, data["reference"], atol=1e-5, rtol=0)
    fs = s3.fs()
    record = json.loads(fs.cat_file(f"{BUCKET}/out.zarr/.chunked_fnet/run.json"))
    assert f"{BUCKET}/in.zarr" in json.dumps(record)
    assert _done(fs, f"{BUCKET}/out.zarr") == TOTAL
    # the output on the store is what is read: nothing was written to a local folder named like it
    assert not Path(f"s3:/{BUCKET}").exists() and not Path(BUCKET).exists()


def test_a_killed_client_resumes_on_the_store_computing_only_the_missing_chunks(s3, data, tmp_path: Path) -> None:
    """kill -9 of the client mid-run; ``--resume`` finishes from the markers on the object store.

    A chunk's marker is one PUT issued after every PUT of its zarr chunks has returned, and a PUT is
    atomic on S3 (an object is there whole or not at all): a marker never names a chunk whose data
    is not stored (chunked_fnet/predict/ledger.py)."""
    out = f"s3://{BUCKET}/killed.zarr"
    fs = s3.fs()
    argv = [sys.executable, "-m", "chunked_fnet", "predict", data["input"], "--models", *data["models"], "--out", out]
    with cli_cluster(tmp_path, n_workers=2) as cluster:
        client = subprocess.Popen([*argv, "--scheduler", cluster.address, *FINE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while _done(fs, out) < 10:
            assert client.poll() is None and time.monotonic() < deadline, client.communicate()
            time.sleep(0.1)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        assert client.returncode == -signal.SIGKILL
        done_at_kill = _done(fs, out)
        assert 10 <= done_at_kill < TOTAL_FINE
        resumed = subprocess.run([*argv, "--scheduler", cluster.address, *FINE, "--resume"], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"wrote .*: (\d+) chunk tasks .* \((\d+) of (\d+) were already done\)", resumed.stdout)
    assert match, resumed.stdout
    computed, skipped, total = map(int, match.groups())
    assert total == TOTAL_FINE and computed + skipped == total and skipped >= done_at_kill and computed > 0
    print(f"resume on s3: {skipped} of {total} chunks were done when the client was killed; the resumed run computed {computed}")
    np.testing.assert_allclose(open_image(out).values, data["reference"], atol=1e-5, rtol=0)
    assert _done(fs, out) == TOTAL_FINE


def test_credentials_are_never_printed_or_written(s3, data, s3_run, tmp_path: Path) -> None:
    port = s3.endpoint.rsplit(":", 1)[1]
    url_secret = "urlpw-" + s3.secret.split("-", 1)[1][::-1]
    runs = [
        s3_run,  # succeeded
        _cli("info", f"s3://{BUCKET}/out.zarr"),
        # failures: a missing store, an existing output, credentials in the URL (s3fs does not take them there)
        _cli("info", f"s3://{BUCKET}/missing.zarr"),
        _cli("predict", data["input"], "--models", *data["models"], "--out", f"s3://{BUCKET}/out.zarr", "--workers", "1", *FLAGS),
        _cli("info", f"s3://{s3.key}:{url_secret}@{BUCKET}/in.zarr"),
        _cli("info", f"http://user:{url_secret}@127.0.0.1:{port}/{BUCKET}/missing.zarr"),
        _cli("predict", f"s3://{s3.key}:{url_secret}@{BUCKET}/in.zarr", "--models", *data["models"], "--out", f"s3://{BUCKET}/never.zarr", *FLAGS),
        _cli("predict", data["input"], "--models", *data["models"], "--out", f"s3://{s3.key}:{url_secret}@{BUCKET}/never.zarr", *FLAGS),
    ]
    assert runs[1].returncode == 0 and all(r.returncode != 0 for r in runs[2:]), [(r.args, r.stderr) for r in runs]
    assert "missing.zarr" in runs[2].stderr and "already exists" in runs[3].stderr
    for refused in (runs[4], runs[6], runs[7]):  # one line naming where credentials go, not botocore's traceback
        line = refused.stderr.strip()
        assert "\n" not in line and "s3:// URLs cannot carry credentials" in line and "AWS_SECRET_ACCESS_KEY" in line, refused.stderr
    for run in runs:
        for text in (run.stdout, run.stderr):
            assert s3.secret not in text and url_secret not in text, (run.args, text)
    fs = s3.fs()
    fs.invalidate_cache()
    files = fs.find(BUCKET)
    assert any(f.endswith(".chunked_fnet/run.json") for f in files)
    for path in files:
        body = fs.cat_file(path)
        assert s3.secret.encode() not in body and url_secret.encode() not in body, path
    assert not fs.exists(f"{BUCKET}/never.zarr")


def test_info_figure_and_view_take_s3_urls(s3, data, s3_run, tmp_path: Path) -> None:
    pred, inp = f"s3://{BUCKET}/out.zarr", data["input"]
    info = _cli("info", pred)
    assert info.returncode == 0 and "channels: dna, er" in info.stdout, info.stderr
    info_in = _cli("info", inp)
    assert info_in.returncode == 0 and "brightfield" in info_in.stdout, info_in.stderr
    for kind in ("slices", "overlay", "timelapse"):
        png = tmp_path / f"{kind}.png"
        result = _cli("figure", kind, pred, "--input", inp, "--out", str(png))
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # view: the metadata is read from the store; neuroglancer is handed the s3:// URL (it fetches by itself)
    view = _cli("view", pred, "--input", inp, "--no-browser", "--seconds", "1", timeout=120)
    assert view.returncode == 0, view.stderr
    assert re.search(rf"layer 'dna': zarr[23]://s3://{BUCKET}/out.zarr/", view.stdout), view.stdout
    assert re.search(rf"layer 'input: brightfield': zarr[23]://s3://{BUCKET}/in.zarr/", view.stdout), view.stdout
    assert "serving the stores" not in view.stdout  # nothing local to serve


@pytest.fixture
def http_root(data, s3_run, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The prediction and its input served read-only on 127.0.0.1 by a static web server that answers byte ranges
    (``request.param`` False: Python's http.server as it is, which does not)."""
    import s3fs

    served = tmp_path / "served"
    served.mkdir()
    s3fs.S3FileSystem(skip_instance_cache=True).get(f"{BUCKET}/out.zarr", str(served / "out.zarr"), recursive=True)  # AWS variables, as the CLI
    (served / "in.zarr").symlink_to(data["root"] / "in.zarr")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler if getattr(request, "param", True) else _PlainHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _PlainHandler(http.server.SimpleHTTPRequestHandler):
    """Python's own static server: it ignores Range requests (sends the whole file, 200)."""

    def log_message(self, *args: object) -> None:
        pass


class _QuietHandler(_PlainHandler):
    """A static web server as nginx or a bucket's website is: single byte ranges answered with 206."""

    def send_head(self):  # noqa: ANN202
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        body = path.read_bytes()
        first, last = match.groups()
        start = len(body) - int(last) if not first else int(first)
        stop = len(body) if not first or not last else min(int(last) + 1, len(body))
        part = body[start:stop]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        return io.BytesIO(part)


def test_info_and_figure_read_http_stores(data, http_root: str, tmp_path: Path) -> None:
    pred, inp = f"{http_root}/out.zarr", f"{http_root}/in.zarr"
    info = _cli("info", pred)
    assert info.returncode == 0 and "channels: dna, er" in info.stdout, info.stderr
    np.testing.assert_allclose(open_image(pred).values, data["reference"], atol=1e-5, rtol=0)
    for kind in ("slices", "overlay"):
        png = tmp_path / f"http_{kind}.png"
        result = _cli("figure", kind, pred, "--input", inp, "--out", str(png))
        assert result.returncode == 0, result.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("http_root", [False], indirect=True)
def test_a_sharded_output_behind_a_server_without_byte_ranges_fails_in_one_line_naming_why(http_root: str, tmp_path: Path) -> None:
    info = _cli("info", f"{http_root}/out.zarr")
    assert info.returncode == 0 and "channels: dna, er" in info.stdout, info.stderr  # metadata needs no ranges
    result = _cli("figure", "slices", f"{http_root}/out.zarr", "--input", f"{http_root}/in.zarr", "--out", str(tmp_path / "never.png"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "ignore HTTP Range requests" in lines[0] and "--shards none" in lines[0], result.stderr
    assert not (tmp_path / "never.png").exists()


def test_view_proxy_serves_a_private_bucket_through_loopback(s3, data, s3_run) -> None:
    """``view --proxy``: the browser reads the bucket's keys from 127.0.0.1, where this process reads
    them with its AWS credentials (the bucket need not be public); byte ranges and missing keys as a
    web server answers them; neuroglancer (headless Chromium, where installed) loads every layer."""
    import urllib.error
    import urllib.request

    from browser import Chromium, find_chromium, layer_problems, wait_for_neuroglancer

    from chunked_fnet.viz.neuroglancer import layer_summary, open_view

    fs = s3.fs()
    with open_view(f"s3://{BUCKET}/out.zarr", data["input"], proxy=True) as session:
        base = session.server.url
        sources = {layer["name"]: layer["source"] for layer in layer_summary(session.state)}
        assert sources["dna"] == f"zarr3://{base}/prediction/" and sources["input: brightfield"] == f"zarr3://{base}/input/"
        meta = f"{BUCKET}/out.zarr/zarr.json"
        with urllib.request.urlopen(f"{base}/prediction/zarr.json") as r:
            assert r.read() == fs.cat_file(meta) and r.headers["Content-Type"] == "application/json"
        ranged = urllib.request.Request(f"{base}/prediction/zarr.json", headers={"Range": "bytes=5-24"})
        with urllib.request.urlopen(ranged) as r:
            assert r.status == 206 and r.read() == fs.cat_file(meta)[5:25]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/prediction/no/such/key")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/prediction/../in.zarr/zarr.json")
        binary = find_chromium()
        if binary is None:
            pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it where apt-get works")
        with Chromium(binary) as chrome:
            chrome.navigate(session.viewer_url)
            status = wait_for_neuroglancer(chrome, timeout=90)
            assert [layer["name"] for layer in status["layers"]] == ["input: brightfield", "dna", "er"]
            assert layer_problems(status) == []
            assert all([s["state"] for s in layer["sources"]] == ["loaded"] for layer in status["layers"]), status["layers"]
        chunk_reads = [p for m, p, code in session.server.requests if m == "GET" and code in (200, 206) and "/c/" in p]
        assert any(p.startswith("/prediction/") for p in chunk_reads) and any(p.startswith("/input/") for p in chunk_reads)
        assert s3.secret not in json.dumps(session.state.to_json())
