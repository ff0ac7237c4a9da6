"""A real S3 server on this machine, for the object-store tests (``tests/test_s3.py``).

The session fixture ``s3`` (``tests/conftest.py``) starts moto's standalone server (``moto_server``, from
``pip install 'moto[server]'``) as a subprocess on 127.0.0.1 at a free port: S3 over HTTP, as a
MinIO or Ceph gateway would speak it, not a mock of s3fs. Clients find it the way a user's would:
through the standard AWS environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL``, which botocore, and so s3fs, reads), set in
``os.environ`` while the fixture lives so that CLI subprocesses and dask workers inherit them; the
previous values are restored at the end. The secret key is a distinctive random string, so a test
can search every output for it. Where moto is not installed or the server does not come up, the
tests skip and say why. The server is stopped at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from processes import free_port, stop

#: What the fixture sets in os.environ (and removes what could point botocore elsewhere).
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
AWS_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@dataclass
class S3Server:
    """A running moto S3 server: its endpoint, the credentials clients use, and an s3fs file system."""

    endpoint: str
    key: str
    secret: str
    process: subprocess.Popen
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment of a subprocess that should reach this server (os.environ already has it)."""
        return dict(os.environ)

    def fs(self) -> Any:
        """A fresh s3fs file system (no listing cache carried between tests) on this server."""
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if needed); return ``s3://name``."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def listening(self) -> list[tuple[str, int]]:
        """(ip, port) of every socket the server process (and its children) listen on."""
        procs = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        return [(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]


def _moto_server() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def _up(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def start_s3() -> Iterator[S3Server]:
    """Start the server; set the AWS variables; yield the :class:`S3Server`; stop it and restore them."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the S3 tests need moto's server and s3fs ({exc}): pip install 'moto[server]' s3fs")
    executable = _moto_server()
    if executable is None:
        pytest.skip("moto_server not found beside this Python or on PATH: pip install 'moto[server]'")
    folder = Path(tempfile.mkdtemp(prefix="chunked_fnet_s3_"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = folder / "moto_server.log"
    with log.open("w") as out:
        process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    saved = {name: os.environ.get(name) for name in (*AWS_VARIABLES, *AWS_CLEARED)}
    try:
        deadline = time.monotonic() + 60
        while not _up(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"moto_server did not come up on {endpoint}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        server = S3Server(endpoint=endpoint, key=f"AKIA{secrets.token_hex(8).upper()}", secret=f"s3cr3t-{secrets.token_hex(12)}", process=process, log=log)
        for name in AWS_CLEARED:
            os.environ.pop(name, None)
        os.environ.update({"AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop(process, timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
