"""Read amplification (issue 29): how many bytes a prediction reads from its input store.

The input is served by a loopback web server that answers byte ranges and counts what it sends per path;
the prediction reads it over ``http://`` on a real local cluster of worker processes. What the design
guarantees: ``predict`` reads every input chunk once, however many blocks of a frame share it
(``RunPolicy.shared_reads``), and the frames' statistics come from those same reads
(``predict/frame_stats.py``): 1.0x the input's bytes. Before, the client's statistics pass read every chunk once
more (2.0x), and before that neighbouring blocks each fetched the chunks under their halos (up to 4 reads of
one chunk). ``plan`` on its own (the default ``statistics="plan"``) still reads each chunk once for them.
"""

from __future__ import annotations

import collections
import functools
import json
import http.server
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.predict.job import run_in_process
from chunked_fnet.predict.plan import plan
from chunked_fnet.predict.policy import Hardware
from chunked_fnet.predict.prepare import create_output
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

OPTIONS = PredictOptions(patch_shape=(8, 32, 32), overlap=0.25, chunks=(8, 16, 16), precision="fp32", device="cpu", shards=None)
CHUNK = re.compile(r"^/in\.zarr/0/c/\d+/0/\d+/\d+/\d+$")  # level 0's chunks of channel 0 (brightfield)


class _Counting(http.server.SimpleHTTPRequestHandler):
    """Files whole (200) or one byte range (206); every body's bytes counted per path in ``server.sent``."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # noqa: ANN202
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return super().send_head()
        body = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        start, stop = 0, len(body)
        if match:
            first, last = match.groups()
            start = len(body) - int(last) if not first else int(first)
            stop = len(body) if not first or not last else min(int(last) + 1, len(body))
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(body)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if self.command == "GET":
            with self.server.lock:  # type: ignore[attr-defined]
                self.server.sent[self.path.split("?")[0]].append(stop - start)  # type: ignore[attr-defined]
        return io.BytesIO(body[start:stop])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, http.server.ThreadingHTTPServer]]:
    root = tmp_path_factory.mktemp("reads")
    generate(SynthConfig(size_t=2, size_z=12, size_y=70, size_x=66, voxel_size=(0.4, 0.4, 0.4), chunks=(8, 32, 32)), root / "in.zarr", progress=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Counting, directory=str(root)))
    server.lock, server.sent = threading.Lock(), collections.defaultdict(list)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, server
    finally:
        server.shutdown()
        server.server_close()


def _take(server: http.server.ThreadingHTTPServer) -> dict[str, list[int]]:
    with server.lock:  # type: ignore[attr-defined]
        sent, server.sent = dict(server.sent), collections.defaultdict(list)  # type: ignore[attr-defined]
    return {p: v for p, v in sent.items() if CHUNK.match(p)}


def test_predict_reads_every_input_chunk_once_and_its_output_is_that_of_the_clients_statistics(served, tmp_path: Path) -> None:
    root, server = served
    url = f"http://127.0.0.1:{server.server_address[1]}/in.zarr"
    stored = {f"/in.zarr/{p.relative_to(root / 'in.zarr').as_posix()}": p.stat().st_size for p in (root / "in.zarr" / "0" / "c").glob("*/0/*/*/*")}
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    _take(server)
    job = plan(url, [model], tmp_path / "unused.zarr", OPTIONS)
    stats = _take(server)
    assert {p: len(v) for p, v in stats.items()} == dict.fromkeys(stored, 1)  # the statistics pass: each chunk once
    policy = job.resolve_policy(Hardware())
    assert policy.shared_reads and len(job.schedule(policy.window).blocks) > 2 * len(job.times)  # frames of several blocks
    with local_client(ClusterSpec(n_workers=2)) as client:
        out, _ = predict(url, [model], tmp_path / "out.zarr", options=OPTIONS, client=client, progress=False)
    run = _take(server)
    counts = collections.Counter({p: len(v) for p, v in run.items()})
    assert counts == collections.Counter(dict.fromkeys(stored, 1)), counts  # the read tasks, for the statistics and the blocks
    assert sum(sum(v) for v in run.values()) == sum(stored.values())  # 1.0x the input's bytes
    recorded = [json.loads((tmp_path / "out.zarr" / ".chunked_fnet" / "frames" / f"t{t}").read_text()) for t in range(2)]
    assert recorded == [{"mean": s.mean, "std": s.std} for s in job.stats]  # the tasks' statistics are the client's, bit for bit

    # the job of the client's statistics with every block task reading its own box from the store: the same output
    direct = replace(job, output_path=str(tmp_path / "direct.zarr"))
    direct_policy = replace(policy, shared_reads=False)
    create_output(direct, direct_policy)
    run_in_process(direct, direct_policy)
    np.testing.assert_array_equal(out.values, open_image(tmp_path / "direct.zarr").values)


def test_a_frame_of_one_block_is_read_once_by_its_block_task(served, tmp_path: Path) -> None:
    root, server = served
    url = f"http://127.0.0.1:{server.server_address[1]}/in.zarr"
    stored = {f"/in.zarr/{p.relative_to(root / 'in.zarr').as_posix()}": p.stat().st_size for p in (root / "in.zarr" / "0" / "c").glob("*/0/*/*/*")}
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    whole = OPTIONS.model_copy(update={"patch_shape": (16, 80, 80), "overlap": 0})  # one patch covers a frame
    job = plan(url, [model], tmp_path / "unused.zarr", whole)
    policy = job.resolve_policy(Hardware())
    assert not policy.shared_reads and len(job.schedule(policy.window).blocks) == len(job.times)
    _take(server)
    with local_client(ClusterSpec(n_workers=2)) as client:
        out, _ = predict(url, [model], tmp_path / "out.zarr", options=whole, client=client, progress=False)
    counts = collections.Counter({p: len(v) for p, v in _take(server).items()})
    assert counts == collections.Counter(dict.fromkeys(stored, 1)), counts
    reference = replace(job, output_path=str(tmp_path / "reference.zarr"))  # the client's statistics, read from the store
    create_output(reference, policy)
    run_in_process(reference, policy)
    np.testing.assert_array_equal(out.values, open_image(tmp_path / "reference.zarr").values)
