"""Serve OME-Zarr folders read-only to a browser on 127.0.0.1, with CORS headers and HTTP Range requests.

Why the standard library and not a package: neuroglancer (the bundled client or any hosted one) reads
zarr keys over HTTP from another origin, so it needs CORS headers (and Chrome's private-network
preflight answer), and it may ask for byte ranges. ``http.server.SimpleHTTPRequestHandler`` has
neither CORS nor Range; the packages that add them are thin, little-maintained wrappers around that
same module, and a full web framework would be a large dependency for about a hundred lines. This
handler binds to loopback only, serves only the folders it is given (never their parents, never a
directory listing, never a file that a symbolic link inside a store leads to outside it) and never
writes. A malformed or absurdly long ``Range`` header is answered 416, not with an error.

A store may also be an object-store prefix (:class:`RemoteStore`): its keys are then read through
fsspec with this process's credentials (the AWS environment or config files for ``s3://``), so a
browser sees a private bucket through 127.0.0.1 without ever holding a credential.
"""

from __future__ import annotations

import mimetypes
import os
import re
import threading
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from chunked_fnet.errors import InputError

HOST = "127.0.0.1"  # never another address: the stores are the user's files
BLOCK = 1 << 20
# at most 18 digits a number (10**18 bytes is an exabyte): a longer one is refused before int() sees it
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$", re.IGNORECASE)
_RANGES = re.compile(r"^bytes=\s*(\d{0,18}-\d{0,18})(\s*,\s*\d{0,18}-\d{0,18})+\s*$", re.IGNORECASE)
_JSON_NAMES = {".zattrs", ".zarray", ".zgroup", ".zmetadata"}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """The inclusive byte range ``(start, end)`` asked for, ``None`` for the whole file, or
    ``"unsatisfiable"``. Several ranges in one header are answered with the whole file (RFC 9110 allows
    a server to ignore Range), as is a range of another unit; a ``bytes`` range that is malformed or
    has a number of more than 18 digits is ``"unsatisfiable"`` (answered 416)."""
    if not header:
        return None
    text = header.strip()
    if not text.lower().startswith("bytes="):
        return None  # another unit (items=...): ignored, the whole file
    if _RANGES.match(text):
        return None
    match = _RANGE.match(text)
    if match is None:
        return "unsatisfiable"
    first, last = match.groups()
    if not first and not last:
        return "unsatisfiable"
    if not first:  # suffix range: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if size and n else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


@dataclass(frozen=True)
class RemoteStore:
    """A store under ``root`` (``bucket/path/to/store.zarr``) of an fsspec file system, read on demand."""

    fs: Any
    root: str

    @classmethod
    def from_url(cls, url: str) -> RemoteStore:
        from fsspec.core import url_to_fs

        from chunked_fnet.io.store import refuse_url_credentials

        refuse_url_credentials(url)
        fs, root = url_to_fs(url)
        return cls(fs, root.rstrip("/"))

    def size(self, rest: list[str]) -> int | None:
        try:
            info = self.fs.info("/".join([self.root, *rest]))
        except OSError:  # missing key, no permission, the endpoint unreachable: answered 404
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def read(self, rest: list[str], start: int, end: int) -> bytes:
        return self.fs.cat_file("/".join([self.root, *rest]), start=start, end=end + 1)


@dataclass(frozen=True)
class _Target:
    """One key to answer: a local file, or a key of a remote store."""

    name: str
    path: Path | None = None
    remote: RemoteStore | None = None
    rest: tuple[str, ...] = ()

    def size(self) -> int | None:
        if self.remote is not None:
            return self.remote.size(list(self.rest))
        try:
            return self.path.stat().st_size  # type: ignore[union-attr]
        except OSError:  # removed or replaced since it was resolved (a store may be rewritten while viewed)
            return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.requests.append((self.command, self.path, int(code) if str(code).isdigit() else 0))
        super().log_request(code, size)

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range, Content-Type")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges, ETag")
        self.send_header("Access-Control-Max-Age", "600")

    def _empty(self, status: HTTPStatus, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self._cors()
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _resolve(self) -> _Target | None:
        """The file a request path names, or None: first component picks a store, the rest lies inside it.

        The file's real path (symbolic links followed) must lie inside the store's real root too: a
        link inside a store to a file elsewhere (``/etc/passwd``, another user's data) is not served.
        """
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] not in self.server.roots:
            return None
        rest = parts[1:]
        if any(p in (".", "..") or "\\" in p or "\0" in p for p in rest):
            return None
        root = self.server.roots[parts[0]]  # already resolved by StoreServer
        if isinstance(root, RemoteStore):
            return _Target(rest[-1], remote=root, rest=tuple(rest))
        real = Path(os.path.realpath(root.joinpath(*rest)))
        if not real.is_relative_to(root) or real == root:
            return None
        return _Target(real.name, path=real) if real.is_file() else None

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        extra = {"Content-Type": "text/plain"}
        if self.headers.get("Access-Control-Request-Private-Network"):
            extra["Access-Control-Allow-Private-Network"] = "true"
        self._empty(HTTPStatus.NO_CONTENT, extra)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        target = self._resolve()
        size = target.size() if target is not None else None
        if target is None or size is None:
            self._empty(HTTPStatus.NOT_FOUND)
            return
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            self._empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
            return
        start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
        length = end - start + 1 if size else 0
        data = b""
        if target.remote is not None and body and length:
            try:  # fetched before the headers: a failed (or short) read is a clean 502, not a short body
                data = target.remote.read(list(target.rest), start, end)
            except OSError:
                pass  # data stays empty
            if len(data) != length:
                self._empty(HTTPStatus.BAD_GATEWAY)
                return
        self.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(wanted, tuple) else HTTPStatus.OK)
        self._cors()
        name = target.name
        is_json = name in _JSON_NAMES or name.endswith(".json")
        self.send_header("Content-Type", "application/json" if is_json else mimetypes.guess_type(name)[0] or "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-cache")  # a store may be rewritten while it is viewed
        self.send_header("Content-Length", str(length))
        if isinstance(wanted, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body or not length:
            return
        try:
            if target.remote is not None:
                self.wfile.write(data)
                return
            with target.path.open("rb") as f:  # type: ignore[union-attr]
                f.seek(start)
                left = length
                while left > 0:
                    chunk = f.read(min(BLOCK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser gave up on this request (e.g. the view moved on)
        except OSError:
            self.close_connection = True  # the file went away mid-answer: the length sent is wrong now


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, roots: Mapping[str, Path | RemoteStore], port: int, verbose: bool) -> None:
        self.roots = dict(roots)
        self.verbose = verbose
        self.requests: deque[tuple[str, str, int]] = deque(maxlen=100_000)
        super().__init__((HOST, port), _Handler)


class StoreServer:
    """Serve each ``stores[name]`` folder (or :class:`RemoteStore`) at ``http://127.0.0.1:PORT/name/`` from a background thread.

    Use as a context manager, or call :meth:`close`. ``port=0`` picks a free port.
    """

    def __init__(self, stores: Mapping[str, str | Path | RemoteStore], port: int = 0, verbose: bool = False) -> None:
        roots: dict[str, Path | RemoteStore] = {}
        for name, folder in stores.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
                raise InputError(f"store name {name!r}: use letters, digits, '_', '-' or '.' only (it becomes a URL path)")
            root = folder if isinstance(folder, RemoteStore) else Path(folder).expanduser().resolve()
            if isinstance(root, Path) and not root.is_dir():
                raise InputError(f"{folder}: not a folder; expected a local OME-Zarr store to serve")
            roots[name] = root
        self._server = _Server(roots, port, verbose)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of the latest requests answered: what a browser asked for."""
        return list(self._server.requests)

    def url_for(self, name: str) -> str:
        """The URL of one served store (with a trailing slash, as zarr sources expect)."""
        if name not in self._server.roots:
            raise KeyError(f"no store named {name!r}; serving {sorted(self._server.roots)}")
        return f"{self.url}/{name}/"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StoreServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
