"""Issue 14, security: ``chunked-fnet view``'s store server serves nothing outside the stores it was
given, whatever symbolic links a store holds, and a hostile ``Range`` header gets a 416, not a crash."""

from __future__ import annotations

import http.client
import os
import socket
import urllib.parse
from pathlib import Path

import pytest

from chunked_fnet.viz.serve import StoreServer, parse_range

SECRET = b"root:x:0:0:not for the browser\n"


def _request(url: str, headers: dict[str, str] | None = None, conn: http.client.HTTPConnection | None = None):
    parts = urllib.parse.urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", parts.path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    if own:
        conn.close()
    return response, body


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "a.zarr"
    (store / "0").mkdir(parents=True)
    (store / "zarr.json").write_text('{"zarr_format": 3}')
    (store / "0" / "c").write_bytes(bytes(range(100)))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    return store


def test_symlinks_leading_out_of_the_store_are_not_followed(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    os.symlink(outside / "passwd", store / "0" / "leak")  # a file link to outside
    os.symlink(outside, store / "elsewhere")  # a folder link to outside
    os.symlink("../../outside/passwd", store / "0" / "relative")  # a relative one
    os.symlink(store / "0" / "c", store / "0" / "alias")  # a link that stays inside is fine
    before = {p: p.read_bytes() for p in (store / "zarr.json", store / "0" / "c", outside / "passwd")}
    with StoreServer({"a": store}) as server:
        for path in ("0/leak", "elsewhere/passwd", "0/relative", "elsewhere/"):
            r, body = _request(server.url_for("a") + path)
            assert r.status in (403, 404), path
            assert SECRET not in body and b"root:" not in body, path
        r, body = _request(server.url_for("a") + "0/alias")
        assert r.status == 200 and body == bytes(range(100))
        r, body = _request(server.url_for("a") + "zarr.json")
        assert r.status == 200 and body == b'{"zarr_format": 3}'
    assert {p: p.read_bytes() for p in before} == before  # read-only: nothing changed


def test_a_store_that_is_itself_a_link_is_served(store: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.zarr"
    os.symlink(store, link)
    with StoreServer({"a": link}) as server:
        r, body = _request(server.url_for("a") + "0/c", headers={"Range": "bytes=0-3"})
        assert r.status == 206 and body == bytes(range(4))


def test_overlong_or_malformed_range_gets_416_and_the_server_keeps_answering(store: Path) -> None:
    with StoreServer({"a": store}) as server:
        url = server.url_for("a") + "0/c"
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        for header in ("bytes=" + "9" * 5000, "bytes=0-" + "9" * 5000, "bytes=" + "1" * 19 + "-",
                       "bytes=abc", "bytes=5-2", "bytes=", "bytes=-", "bytes=0-1," + "9" * 5000):
            r, body = _request(url, {"Range": header}, conn)
            assert r.status == 416 and r.getheader("Content-Range") == "bytes */100" and body == b"", header[:40]
        r, body = _request(url, conn=conn)  # the same connection still works
        assert r.status == 200 and body == bytes(range(100))
        conn.close()
        r, body = _request(url, {"Range": "bytes=90-"})  # and a new one
        assert r.status == 206 and body == bytes(range(90, 100))
        assert not any(status >= 500 for _, _, status in server.requests)


def test_range_parsing_refuses_what_it_cannot_honour() -> None:
    assert parse_range("bytes=" + "9" * 5000, 10) == "unsatisfiable"
    assert parse_range("bytes=1-" + "9" * 19, 10) == "unsatisfiable"
    assert parse_range("bytes=2-" + "9" * 18, 10) == (2, 9)  # 18 digits is still a number
    assert parse_range("bytes=x-1", 10) == "unsatisfiable"
    assert parse_range("bytes=0-1, 4-5", 10) is None  # several valid ranges: the whole file, as before
    assert parse_range("items=0-1", 10) is None  # another unit: ignored, as RFC 9110 allows


def test_a_raw_request_with_a_huge_range_does_not_kill_the_server(store: Path) -> None:
    with StoreServer({"a": store}) as server:
        port = int(urllib.parse.urlsplit(server.url).port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /a/0/c HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"7" * 20_000 + b"-\r\n\r\n")
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 416"), reply[:80]
        r, body = _request(server.url_for("a") + "zarr.json")
        assert r.status == 200 and body == b'{"zarr_format": 3}'
