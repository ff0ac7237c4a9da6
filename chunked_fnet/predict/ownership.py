"""Who owns an output: one run at a time, from its creation to its end, on a local disk or an object store.

A run claims its output before it writes anything by creating ``OUT/.chunked_fnet/owner/<n>.json``
*exclusively* (``O_EXCL`` on a disk, a conditional ``If-None-Match: *`` PUT on S3): of two runs started
together exactly one succeeds, and the other is refused naming the holder, before it has made (or
could remove) anything. A resume or an overwrite takes a stale claim over by creating claim ``n + 1``,
exclusively again, so two takers cannot both win; claims are never deleted by another run.

A claim is live while its run refreshes its heartbeat (every :data:`HEARTBEAT_S` seconds, by a thread
of the client) and has not released it; a run on this host whose process is gone is stale at once (a
SLURM requeue after ``kill -9`` resumes immediately), a run elsewhere after :data:`LEASE_S` seconds of
silence. A lock file would not do: object stores have none, and NFS honours them unevenly.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from chunked_fnet.errors import OutputExistsError
from chunked_fnet.io.store import redact
from chunked_fnet.io.writer import unwritable_output
from chunked_fnet.predict.ledger import LEDGER, OWNER, Ledger

__all__ = ["HEARTBEAT_S", "LEASE_S", "Claim", "already_exists", "claimed", "clear_for_overwrite", "is_live", "refuse_if_held", "refuse_unless_replaceable"]

HEARTBEAT_S = 5.0
#: Silence after which a claim from another host is taken as its run's death (6 heartbeats missed).
LEASE_S = 30.0


def _claims(ledger: Ledger) -> dict[int, str]:
    try:
        names = ledger.names(f"{ledger.root}/{OWNER}")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {int(n[:-5]): f"{ledger.root}/{OWNER}/{n}" for n in names if n.endswith(".json") and n[:-5].isdigit()}


def _read(ledger: Ledger, path: str) -> dict[str, Any]:
    """A claim's contents; one that cannot be read as a claim (damaged by hand or by a disk) is judged by
    its file's modification time: its run may be alive, so it is taken over only after the lease."""
    try:
        raw = ledger.fs.cat_file(path)
    except FileNotFoundError:  # released and cleared
        return {}
    try:
        info = json.loads(raw)
        if isinstance(info, dict) and "heartbeat" in info:
            return info
    except ValueError:
        pass
    try:
        modified = ledger.fs.modified(path).timestamp()
    except (FileNotFoundError, NotImplementedError, OSError):
        modified = time.time()  # cannot tell: as if it had just been written
    return {"run": f"of the unreadable claim {redact(path)}", "heartbeat": modified, "started": modified}


def is_live(info: dict[str, Any], now: float | None = None) -> bool:
    """Whether the run that wrote ``info`` still holds its output."""
    if not info or info.get("released") or (now or time.time()) - float(info.get("heartbeat", 0)) > LEASE_S:
        return False
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
    return True


def describe_holder(info: dict[str, Any]) -> str:
    seen = time.time() - float(info.get("heartbeat", 0))
    return (f"run {info.get('run')} (pid {info.get('pid')} on {info.get('host')}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(info.get('started', 0))))}, last heard from {seen:.0f} s ago)")


class Claim:
    """This run's claim on its output, kept alive by a heartbeat thread until :meth:`release`."""

    def __init__(self, ledger: Ledger, number: int) -> None:
        self.ledger, self.number = ledger, number
        self.path = f"{ledger.root}/{OWNER}/{number}.json"
        now = time.time()
        self.info = {"run": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
        self.writing = False  # set by the run once its checks pass: until then, a refusal leaves the output as it was
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="chunked_fnet-claim-heartbeat", daemon=True)

    def create(self, output: str) -> None:
        """Create the claim exclusively (FileExistsError if another run created it first); an output that
        cannot be written at all is refused here, in one line naming it, before anything else is tried."""
        local = Path(self.ledger.output) if isinstance(self.ledger.fs, LocalFileSystem) else None
        try:
            self.ledger.fs.makedirs(f"{self.ledger.root}/{OWNER}", exist_ok=True)
            self.ledger.put(self.path, json.dumps(self.info).encode(), exclusive=True)
        except FileExistsError:
            if local is None or (local.parent.is_dir() and Path(self.path).parent.is_dir()):
                raise
            raise unwritable_output(redact(output), local, NotADirectoryError(20, "Not a directory")) from None
        except OSError as exc:
            raise unwritable_output(redact(output), local, exc) from None
        self._thread.start()

    def _write(self) -> None:
        self.ledger.put(self.path, json.dumps(self.info).encode())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.info["heartbeat"] = time.time()
            try:
                self._write()
            except OSError:  # a full disk or a lost network store: the run itself will report it
                pass

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def discard(self) -> None:
        """Remove the claim and the folders it made, for a run that wrote nothing else: what is not
        empty (earlier runs' claims, another run's made since) stays."""
        self._stop_beating()
        self.ledger.fs.rm(self.path)
        for folder in (f"{self.ledger.root}/{OWNER}", self.ledger.root, self.ledger.output):
            try:
                self.ledger.fs.rmdir(folder)
            except OSError:
                return

    def release(self) -> None:
        """The run has ended (finished, failed or interrupted): the next run need not wait for the lease."""
        self._stop_beating()
        self.info["released"] = True
        try:
            if self.ledger.fs.exists(self.path):  # an output removed by its own failed creation has no claim left
                self._write()
        except OSError:
            pass


def already_exists(output: str) -> OutputExistsError:
    return OutputExistsError(f"{redact(output)} already exists; pass --overwrite to replace it, or --resume to finish an interrupted run")


def _refusal(output: str, info: dict[str, Any], what: str) -> OutputExistsError:
    return OutputExistsError(
        f"{redact(output)} is being written by another {describe_holder(info)}; {what} (wait for it to end, "
        f"or choose another --out; a run that died is taken over {LEASE_S:g} s after its last heartbeat)"
    )


def refuse_if_held(output: str) -> None:
    """Refuse, naming it, while a live run holds ``output`` (before other checks: "already exists" would not say who)."""
    _latest_stale(Ledger(output), output)


def _latest_stale(ledger: Ledger, output: str) -> int:
    """The number of the latest claim (-1: none), refusing if its run is live. One listing serves both, so
    that the next number is taken from what was judged: a claim made since makes the exclusive create fail."""
    claims = _claims(ledger)
    latest = max(claims, default=-1)
    if latest >= 0 and is_live(info := _read(ledger, claims[latest])):
        raise _refusal(output, info, "two runs must not write one output")
    return latest


@contextmanager
def claimed(output: str) -> Iterator[Claim]:
    """Hold ``output`` for the duration of a run: claim 0 of a new output, or the next claim after a
    stale one. Refuses, naming the holder, while another run is live. Whether the run may write what is
    there already (resume, overwrite) is the caller's to check, once it holds the claim."""
    ledger = Ledger(output)
    claim = Claim(ledger, _latest_stale(ledger, output) + 1)
    try:
        claim.create(output)
    except FileExistsError:  # another run claimed it between our look and our create
        raise _refusal(output, _read(ledger, claim.path), "it claimed the output a moment before this run") from None
    try:
        yield claim
    finally:
        if not claim.writing or (claim.number == 0 and not ledger.output_exists()):  # refused, or made nothing
            claim.discard()
        else:
            claim.release()


def refuse_unless_replaceable(output: str) -> None:
    """``--overwrite`` replaces a zarr store only (checked before the run claims, and so writes into, it)."""
    ledger = Ledger(output)
    try:
        names = ledger.names(ledger.output) - {LEDGER}
    except (FileNotFoundError, NotADirectoryError):
        names = {"?"} if ledger.fs.exists(ledger.output) else set()
    if names and not names & {"zarr.json", ".zgroup", ".zattrs", ".zarray"}:
        raise OutputExistsError(f"{redact(output)} exists and is not a zarr store; refusing to delete it even with overwrite")


def clear_for_overwrite(output: str) -> None:
    """Remove an output's contents but its claims, once this run holds it: a second run started with
    ``--overwrite`` at the same moment can then never delete what this one writes."""
    ledger = Ledger(output)
    for folder, keep in ((ledger.output, LEDGER), (ledger.root, OWNER)):
        for name in ledger.names(folder) - {keep}:
            ledger.fs.rm(f"{folder}/{name}", recursive=True)
