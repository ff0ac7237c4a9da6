"""Issue 14: every failure ends in one line naming the file and what to do, the input is never
changed, and once the mistake is fixed the same command finishes the run.

Damaged input (a chunk that cannot be decoded, a ``zarr.json`` that is not JSON), a torn run record
met by ``--resume``, and outputs that cannot be created (a file where a folder belongs, a folder
without write permission): through the ``chunked-fnet predict`` command line where practical.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chunked_fnet import cli
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.device import bf16_is_native
from chunked_fnet.errors import ChunkedFnetError, InputError, OmeZarrError, UnreadableChunkError
from chunked_fnet.io.reader import open_image, open_level_array, region_reader
from factories import tiny_checkpoint
from chunked_fnet.predict import PredictOptions
from chunked_fnet.predict.ledger import Ledger
from chunked_fnet.synth.dataset import SynthConfig, generate

FLAGS = ["--patch", "8", "16", "16", "--overlap", "0.25", "--chunks", "8", "16", "16", "--workers", "1", "--no-progress"]
OPTIONS = PredictOptions(patch_shape=(8, 16, 16), overlap=0.25, chunks=(8, 16, 16))
CHUNK = "0/c/0/0/0/0/0"  # t=0, channel 0 (brightfield, the channel predicted from), first z/y/x chunk


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hardening")
    generate(SynthConfig(size_t=1, size_z=8, size_y=32, size_x=32, voxel_size=(0.4, 0.4, 0.4), chunks=(8, 16, 16)), root / "in.zarr", progress=False)
    return root / "in.zarr", tiny_checkpoint(root / "dna.ckpt")


@pytest.fixture
def work(pristine, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the input (the test may damage it) and the model."""
    image, model = pristine
    shutil.copytree(image, tmp_path / "in.zarr")
    return tmp_path / "in.zarr", model


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chunked_fnet", *map(str, args)], capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one non-empty line on stderr and no traceback; that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _predict(image: Path, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("predict", image, "--models", model, "--out", out, *FLAGS, *extra)


def _succeeds(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr


# --- damaged input chunks --------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_damaged_chunk_is_one_line_naming_store_array_and_chunk(work, tmp_path: Path, damage: str) -> None:
    image, model = work
    chunk = image / CHUNK
    good = chunk.read_bytes()
    chunk.write_bytes(good[: len(good) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(len(good)))
    before = _snapshot(image)
    line = _one_line_error(_predict(image, model, tmp_path / "o.zarr"))
    assert f"{image}/{CHUNK}: chunk cannot be decoded" in line and "restore this file" in line, line
    assert _snapshot(image) == before
    chunk.write_bytes(good)  # the mistake fixed: the same command (or its --resume) now succeeds
    if bf16_is_native(torch.device("cpu")):
        # precision auto computes bf16 here, so the precision check reads the frame's first patch (this
        # chunk) before the output is created: nothing was made
        assert not (tmp_path / "o.zarr").exists()
        _succeeds(_predict(image, model, tmp_path / "o.zarr"))
    else:
        # fp32 here: no check, so a worker is the first to read the chunk, and the output it started stays,
        # its finished chunks recorded, for --resume (as in the next test)
        assert (tmp_path / "o.zarr").exists() and "--resume" in line, line
        _succeeds(_predict(image, model, tmp_path / "o.zarr", "--resume"))


def test_damaged_chunk_read_by_a_worker_is_picklable_and_named(work, tmp_path: Path) -> None:
    """The chunk is damaged after the checks (so a dask worker process is the first to read it): the
    error crosses from the worker as itself, the run ends in one line naming the chunk, and once the
    file is restored ``--resume`` finishes the output."""
    image, model = work
    chunk = image / CHUNK
    good = chunk.read_bytes()
    chunk.write_bytes(good[:7])

    array, meta, _ = open_level_array(image)
    with pytest.raises(OmeZarrError) as caught:
        region_reader(array, meta.dims, 0, 0)((slice(0, 8), slice(0, 32), slice(0, 32)))
    message = str(caught.value)
    assert message.startswith(f"{image}/{CHUNK}: chunk cannot be decoded") and "\n" not in message
    copy = pickle.loads(pickle.dumps(caught.value))  # dask ships it from worker to client this way
    assert type(copy) is UnreadableChunkError and str(copy) == message and isinstance(copy, OmeZarrError)  # no retry can fix it

    from chunked_fnet.predict import Hardware, create_output, execute, plan

    chunk.write_bytes(good)
    job = plan(image, [model], tmp_path / "o.zarr", OPTIONS.model_copy(update={"retries": 0}))
    policy = job.resolve_policy(Hardware())
    chunk.write_bytes(good[:7])
    before = _snapshot(image)
    with local_client(ClusterSpec(n_workers=1)) as client:
        create_output(job, policy)
        with pytest.raises(ChunkedFnetError) as failed:
            execute(job, policy, client, progress=False)
    text = str(failed.value)
    assert "\n" not in text and f"UnreadableChunkError: {image}/{CHUNK}: chunk cannot be decoded" in text, text
    assert "--resume" in text and _snapshot(image) == before
    chunk.write_bytes(good)
    _succeeds(_predict(image, model, tmp_path / "o.zarr", "--resume"))


# --- metadata that is not JSON --------------------------------------------------------------------


@pytest.mark.parametrize("document", ["zarr.json", "0/zarr.json"])
@pytest.mark.parametrize("content", [b'{"zarr_format": 3, "node_ty', b"\xff\xfe\x00garbage"])
def test_invalid_zarr_json_is_one_line_naming_the_file(work, tmp_path: Path, document: str, content: bytes) -> None:
    image, model = work
    path = image / document
    good = path.read_bytes()
    path.write_bytes(content)
    before = _snapshot(image)
    line = _one_line_error(_predict(image, model, tmp_path / "o.zarr"))
    assert f"{image}/{document} is not valid JSON (" in line and "the store is damaged" in line, line
    assert _snapshot(image) == before and not (tmp_path / "o.zarr").exists()
    path.write_bytes(good)
    assert open_image(image).shape == (1, 7, 8, 32, 32)  # readable again (the full rerun is tested above)


def test_metadata_of_the_wrong_shape_is_named(work) -> None:
    image, _ = work
    (image / "0" / "zarr.json").write_text("[1, 2]")
    with pytest.raises(OmeZarrError, match=r"0/zarr\.json holds a JSON list, not an object; the store is damaged"):
        open_image(image)


# --- the run record -------------------------------------------------------------------------------


def test_resume_with_torn_run_record_is_one_line_then_overwrite_finishes(work, tmp_path: Path) -> None:
    image, model = work
    out = tmp_path / "o.zarr"
    _succeeds(_predict(image, model, out))
    record = out / ".chunked_fnet" / "run.json"
    record.write_bytes(record.read_bytes()[:40])  # what a crash mid-write used to leave
    before_in, before_out = _snapshot(image), _snapshot(out)
    line = _one_line_error(_predict(image, model, out, "--resume"))
    assert f"{out}/.chunked_fnet/run.json is damaged (JSONDecodeError:" in line and "rerun with --overwrite to start over" in line, line
    assert _snapshot(image) == before_in and _snapshot(out) == before_out  # the refusal touched nothing
    _succeeds(_predict(image, model, out, "--overwrite"))
    assert json.loads(record.read_text())["models"]


def test_ledger_writes_are_atomic_on_a_local_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(str(tmp_path / "o.zarr"))
    ledger.write_record({"version": 1})
    ledger.mark_done("t0-z0-y0-x0", {"seconds": 1.0})
    folder = tmp_path / "o.zarr" / ".chunked_fnet"

    def crash(*_args, **_kwargs):  # the process dies between writing the new version and renaming it
        raise OSError(errno.EIO, "simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ledger.write_record({"version": 2, "padding": "x" * 10_000})
    with pytest.raises(OSError, match="simulated crash"):
        ledger.mark_done("t0-z0-y0-x16", {"seconds": 1.0})
    monkeypatch.undo()
    assert ledger.read_record() == {"version": 1}  # the old record, whole
    assert ledger.done() == {"t0-z0-y0-x0"}
    assert sorted(p.name for p in folder.rglob("*")) == ["done", "run.json", "t0-z0-y0-x0"]  # no temporary left
    # a temporary left by a SIGKILL between open and rename is not taken for a marker
    (folder / "done" / ".t0-z0-y0-x16.1234abcd.tmp").write_bytes(b"{")
    assert ledger.done() == {"t0-z0-y0-x0"}


def test_ledger_on_an_object_store_uses_one_put_and_refuses_a_damaged_record() -> None:
    ledger = Ledger("memory://hardening/o.zarr")
    ledger.write_record({"version": 1})
    assert ledger.read_record() == {"version": 1}
    ledger.fs.pipe_file(f"{ledger.root}/run.json", b"[1, 2]")
    with pytest.raises(InputError, match=r"^memory://hardening/o\.zarr/\.chunked_fnet/run\.json is damaged \(a JSON list, not an object\); rerun with --overwrite"):
        ledger.read_record()


# --- outputs that cannot be created ---------------------------------------------------------------


def test_output_under_a_file_is_one_line_naming_the_output(work, tmp_path: Path) -> None:
    image, model = work
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output's folder should be")
    before = _snapshot(tmp_path)
    line = _one_line_error(_predict(image, model, blocker / "o.zarr"))
    assert f"cannot create the output {blocker / 'o.zarr'}" in line and f"{blocker} is a file, not a folder" in line, line
    assert "choose an output path in a writable folder" in line
    assert _snapshot(tmp_path) == before
    _succeeds(_predict(image, model, tmp_path / "o.zarr"))


def test_output_in_a_read_only_folder_is_one_line_naming_the_output(work, tmp_path: Path, monkeypatch, capsys) -> None:
    """root may write anywhere, so the folder's refusal is simulated where the system would give it:
    creating a folder inside it fails with EACCES (as ``mkdir`` does in a folder without write permission)."""
    image, model = work
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs):
        if self == locked or locked in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    before = _snapshot(tmp_path)
    code = cli.main(["predict", str(image), "--models", str(model), "--out", str(locked / "o.zarr"), *FLAGS])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot create the output {locked / 'o.zarr'}: PermissionError: Permission denied" in lines[0], lines[0]
    assert "choose an output path in a writable folder (or fix the folder's permissions)" in lines[0]
    assert _snapshot(tmp_path) == before and not any(locked.iterdir())
    monkeypatch.undo()
    code = cli.main(["predict", str(image), "--models", str(model), "--out", str(locked / "o.zarr"), *FLAGS])
    assert code == 0, capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders; the monkeypatched test above covers it")
def test_output_in_a_really_read_only_folder(work, tmp_path: Path) -> None:
    image, model = work
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _one_line_error(_predict(image, model, locked / "o.zarr"))
        assert f"cannot create the output {locked / 'o.zarr'}: PermissionError" in line, line
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_cli_turns_any_os_error_into_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def refuse(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out\nwith a newline")

    monkeypatch.setattr(cli, "cmd_synth", refuse)
    code = cli.main(["synth", "/data/out"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.strip() == "chunked-fnet synth: error: PermissionError: Permission denied (/data/out with a newline)"
