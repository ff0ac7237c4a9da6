"""Read amplification (issue 29): bytes a prediction reads from its input store / the input's stored bytes.

    python benchmarks/run.py storage read-amplification [--cases timelapse fullfield] [--no-save]

(``--cases tiny``: a 2 x 16x96x96 time-lapse, to check the measurement runs, in seconds.)

The input (``chunked-fnet synth``'s defaults: uint16, zstd, chunks 1x1x32x256x256) is served by a loopback
web server (:class:`CountingServer`, 127.0.0.1 only) that answers single byte ranges and counts every byte
it sends, per path. ``chunked_fnet.predict.predict`` reads it over ``http://`` at the product's defaults
(``PredictOptions()`` bar ``device="cpu"``, ``precision="fp32"``) on a real local cluster of worker processes
(``ClusterSpec()``: this machine's default). Read counts do not depend on the model's FLOPs, but the window
does depend on the model; so the run uses a U-Net of the paper's depth (same multiple, same overlap) and
width 4, given the window the *paper* U-Net (depth 4, width 32) gets on this cluster by default, which the
policy resolves without running that model (``plan`` + ``cluster_hardware`` + ``PredictJob.resolve_policy``).

Reported: the input channel's chunk bytes served / that channel's stored chunk bytes (what a run must
read at least once): everything ``predict`` reads, the frames' statistics included (computed by the tasks
from the chunks they read, ``predict/frame_stats.py``; until 2026-12-04 the client read every frame once
more for them before the tasks ran, the "stats pass" column of the older rows); metadata (``zarr.json``,
listings) counted separately; and how often each input chunk was read, and why more than once.
"""

from __future__ import annotations

import argparse
import collections
import functools
import http.server
import io
import math
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import machine as M, results as R, workloads as W

SUITE = "storage"
SECTION = "Read amplification (issue 29)"
COLUMNS = ["date", "case (t x z y x, chunks)", "window (patch, overlap)", "blocks per frame", "stats pass", "blocks", "total",
           "metadata", "chunks read more than once", "commit", "command", "machine"]
CASES = {"timelapse": (4, (48, 384, 384)), "fullfield": (1, (48, 1536, 1536)), "tiny": (2, (16, 96, 96))}
INPUT_NAME = "input.zarr"


# ------------------------------------------------------------------------------------ the server
class CountingServer(http.server.ThreadingHTTPServer):
    """A static web server on 127.0.0.1 that answers single byte ranges (206) and counts the bytes of
    every response body it sends, per request path (``log``: path -> list of body sizes)."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(root)))
        self.lock = threading.Lock()
        self.log: dict[str, list[int]] = collections.defaultdict(list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, path: str, size: int) -> None:
        with self.lock:
            self.log[path].append(size)

    def take(self) -> dict[str, list[int]]:
        """The log so far, emptied."""
        with self.lock:
            log, self.log = self.log, collections.defaultdict(list)
        return dict(log)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    server: CountingServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self._head()
        if body is not None:
            data = body.read()
            self.server.record(self.path.split("?")[0], len(data))
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._head()

    def _head(self) -> io.BytesIO | None:
        """Headers sent; the body to send (None: nothing). A file is answered whole (200) or, asked for one
        byte range, that range (206); directories as http.server lists them."""
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            f = self.send_head()
            if f is None:
                return None
            data = f.read()
            f.close()
            return io.BytesIO(data)
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
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        return io.BytesIO(body[start:stop])


@contextmanager
def serving(root: Path) -> Iterator[CountingServer]:
    server = CountingServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------- inputs
def synth_default_chunks(path: Path, size_t: int, shape: Sequence[int]) -> Path:
    """A synthetic time-lapse as ``chunked-fnet synth`` writes it by default (its chunks), at 0.29 µm
    (the benchmark models' voxel), generated once and reused while its config is unchanged."""
    from chunked_fnet.synth.dataset import SynthConfig, generate

    config = SynthConfig(size_t=size_t, size_z=shape[0], size_y=shape[1], size_x=shape[2], voxel_size=(0.29,) * 3)
    marker = path.with_name(path.name + ".config.json")
    if not (path.exists() and marker.exists() and marker.read_text() == config.model_dump_json()):
        print(f"generating {path} ({size_t} x {tuple(shape)}) ...", flush=True)
        generate(config, path, overwrite=True, progress=False)
        marker.write_text(config.model_dump_json())
    return path


def narrow_checkpoint(folder: Path) -> str:
    """A U-Net of the paper's depth (so its multiple and overlap) but width 4: the window is given, and
    read counts do not depend on FLOPs."""
    W.ARCHS.setdefault("narrow", {"width": 4})
    return W.make_checkpoints(folder, "narrow", 1)[0]


@dataclass(frozen=True)
class Case:
    name: str
    size_t: int
    shape: tuple[int, int, int]
    chunks: tuple[int, ...]
    channel: int
    stored: int  # bytes of the input channel's stored chunks, every frame


def chunk_prefix(channel: int) -> re.Pattern[str]:
    """Paths of level 0's chunks of ``channel`` (keys t/c/z/y/x, separator '/')."""
    return re.compile(rf"^/{INPUT_NAME}/0/c/\d+/{channel}/\d+/\d+/\d+$")


def describe_input(path: Path, name: str, size_t: int, shape: tuple[int, int, int]) -> Case:
    import zarr

    from chunked_fnet import open_image

    image = open_image(str(path))
    channel = [str(c) for c in image["c"].values].index("brightfield")
    chunks = tuple(zarr.open_array(str(path / "0"), mode="r").chunks)
    stored = sum(f.stat().st_size for f in (path / "0" / "c").glob(f"*/{channel}/*/*/*"))
    return Case(name, size_t, shape, chunks, channel, stored)


# ----------------------------------------------------------------------------------------- a run
def paper_window(case_input: Path, data: Path, client) -> tuple[tuple[int, ...], tuple[int, ...], str]:  # noqa: ANN001
    """(patch, overlap, blend) the paper U-Net gets at the defaults on ``client``'s cluster: the policy
    resolved from the plan and the cluster's facts, without running that model."""
    from chunked_fnet.predict import PredictOptions
    from chunked_fnet.predict.plan import plan
    from chunked_fnet.predict.prepare import cluster_hardware

    paper = W.make_checkpoints(data / "models", "default", 1)
    options = PredictOptions(device="cpu", precision="fp32")
    job = plan(str(case_input), paper, data / "unused.zarr", options)
    window = job.resolve_policy(cluster_hardware(client, "cpu")).window
    return tuple(window.patch_shape), tuple(window.overlap_voxels), window.blend


def reads(log: dict[str, list[int]], case: Case) -> tuple[int, int, collections.Counter]:
    """(chunk bytes of the input channel, other bytes, reads per chunk path) in ``log``."""
    pattern = chunk_prefix(case.channel)
    data = sum(sum(v) for p, v in log.items() if pattern.match(p))
    other = sum(sum(v) for p, v in log.items() if not pattern.match(p))
    counts = collections.Counter({p: len(v) for p, v in log.items() if pattern.match(p)})
    return data, other, counts


def chunk_geometry(job, window, case: Case) -> tuple[int, collections.Counter]:  # noqa: ANN001
    """Blocks per frame, and for each input chunk of frame 0 how many block tasks' read boxes (their patches'
    bounding box, mirrored padding folded in) touch it: >1 is a halo or a block/chunk misalignment."""
    from chunked_fnet.sliding_window.padding import read_extent

    blocks = [b for b in job.schedule(window).blocks if b.time_index == 0]
    touched: collections.Counter = collections.Counter()
    cz, cy, cx = case.chunks[-3:]
    for b in blocks:
        corners, _ = window.owned(b.block)
        box = read_extent(window.grid.bounding_box(corners).slices, window.grid.shape, window.pad_mode)
        for key in _chunks_of(box, (cz, cy, cx)):
            touched[key] += 1
    return len(blocks), touched


def _chunks_of(box: Sequence[slice], chunks: Sequence[int]) -> list[tuple[int, ...]]:
    import itertools

    return list(itertools.product(*(range(s.start // c, math.ceil(s.stop / c)) for s, c in zip(box, chunks, strict=True))))


def measure(case: Case, path: Path, data: Path, client, model: str, server: CountingServer) -> dict:  # noqa: ANN001
    """Serve ``path``, plan (the statistics pass) and predict through ``predict`` at the defaults with the
    paper's window; bytes and per-chunk reads of each phase."""
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.predict.plan import plan
    from chunked_fnet.predict.prepare import cluster_hardware

    patch, overlap, blend = paper_window(path, data, client)
    # the overlap in voxels where patches meet; "auto" where there is none (0 would be read as a fraction: a gaussian blend)
    options = PredictOptions(device="cpu", precision="fp32", patch_shape=patch, overlap=max(overlap) or "auto")
    url = f"{server.url}/{INPUT_NAME}"
    out = Path(tempfile.mkdtemp(dir=data)) / "out.zarr"
    job = plan(url, [model], out, options, statistics="tasks")  # as predict plans: the statistics left to the tasks
    window = job.resolve_policy(cluster_hardware(client, "cpu")).window
    assert (window.patch_shape, window.overlap_voxels, window.blend) == (patch, overlap, blend), (window, patch, overlap)
    n_blocks, touched = chunk_geometry(job, window, case)
    server.take()
    _, summary = predict(url, [model], out, options=options, client=client, progress=False)
    total_data, total_meta, counts = reads(server.take(), case)
    # the frames' statistics come from the tasks' own reads (predict/frame_stats.py): the client reads no chunk
    # for them (it did until 2026-12-04: a whole pass, 1.0x, before the tasks)
    stats_data, stats_meta = 0, 0
    run_data = total_data
    run_counts = counts
    histogram = collections.Counter(run_counts.values())
    multi = sum(1 for v in run_counts.values() if v > 1)
    return {
        "version": _commit(), "patch": patch, "overlap": overlap, "blend": blend, "blocks": n_blocks,
        "stats": stats_data / case.stored, "run": run_data / case.stored, "total": total_data / case.stored,
        "meta_bytes": total_meta, "stats_meta": stats_meta, "histogram": dict(sorted(histogram.items())),
        "chunks": len(counts), "multi": multi, "touched": dict(sorted(collections.Counter(touched.values()).items())),
        "summary": str(summary),
    }


def _commit() -> str:
    """The repository's commit (``+`` when the work tree differs from it): which code was measured."""
    import subprocess

    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=R.ROOT, check=False)
    head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
    return head + ("+" if run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip() else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["timelapse", "fullfield"])
    W.add_data_args(parser)
    args = parser.parse_args(argv)
    from chunked_fnet.cluster import ClusterSpec, local_client

    data = Path(args.data) / "read_amplification"
    data.mkdir(parents=True, exist_ok=True)
    root = data / "served"
    root.mkdir(exist_ok=True)
    model = narrow_checkpoint(data / "models")
    machine = M.machine()
    with local_client(ClusterSpec()) as client:
        for name in args.cases:
            size_t, shape = CASES[name]
            source = synth_default_chunks(data / f"{name}_{size_t}x{'x'.join(map(str, shape))}.zarr", size_t, shape)
            served = root / INPUT_NAME
            if served.is_symlink() or served.exists():
                served.unlink()
            served.symlink_to(source.resolve())
            case = describe_input(source, name, size_t, shape)
            with serving(root) as server:
                r = measure(case, source, data, client, model, server)
            print(f"{name}: {size_t} x {shape}, chunks {case.chunks}, channel {case.channel} stored {case.stored / 2**20:.1f} MiB")
            print(f"  paper window: patch {list(r['patch'])} overlap {list(r['overlap'])} blend {r['blend']}; {r['blocks']} block(s) per frame")
            print(f"  bytes read / input bytes: stats pass {r['stats']:.3f}, blocks {r['run']:.3f}, total {r['total']:.3f}")
            print(f"  metadata: {r['meta_bytes'] / 1024:.1f} KiB ({r['stats_meta'] / 1024:.1f} KiB in plan)")
            print(f"  block-phase reads per chunk (reads: chunks): {r['histogram']}; block read boxes touching a frame-0 chunk: {r['touched']}")
            print(f"  {r['summary']}")
            if not args.no_save:
                cells = [
                    R.today(), f"{name}: {size_t} x {'x'.join(map(str, shape))}, chunks {'x'.join(map(str, case.chunks[-3:]))}",
                    f"{'x'.join(map(str, r['patch']))}, {'/'.join(map(str, r['overlap']))} ({r['blend']})", r["blocks"],
                    f"{r['stats']:.2f}", f"{r['run']:.2f}", f"{r['total']:.2f}", f"{r['meta_bytes'] / 1024:.0f} KiB",
                    f"{r['multi']} of {r['chunks']} (block reads per chunk: {r['histogram']})", r["version"], R.command_line(), machine,
                ]
                figures = {"stats_pass": r["stats"], "blocks": r["run"], "total": r["total"], "metadata_bytes": r["meta_bytes"],
                           "blocks_per_frame": r["blocks"], "chunks": r["chunks"], "chunks_read_more_than_once": r["multi"],
                           "stored_bytes": case.stored}
                params = {"case": name, "size_t": size_t, "shape": list(shape), "chunks": list(case.chunks), "patch": list(r["patch"]),
                          "overlap": list(r["overlap"]), "blend": r["blend"], "commit": r["version"]}
                R.save_row(SUITE, SECTION, COLUMNS, cells, figures=figures, params=params)

if __name__ == "__main__":
    main()
