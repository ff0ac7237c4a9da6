"""Turn a path or an fsspec URL into a zarr store, and name it in messages without leaking credentials."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zarr
from zarr.storage import FsspecStore, LocalStore

from chunked_fnet.errors import InputError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
# Not anchored at the start (and never spanning whitespace) so that a URL inside a message is redacted too.
_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]+@")
# x-goog-*: Google Cloud Storage V4 signed URLs, alongside AWS (x-amz-*) and Azure SAS (sig).
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:x-(?:amz|goog)-[a-z-]*signature|x-(?:amz|goog)-credential|x-amz-security-token"
    r"|sig|signature|token|key|secret|password)=)[^&\s]+"
)


#: Object stores whose fsspec file systems take no user:password@ in a URL: s3fs, for one, reads it as
#: part of the bucket name, and botocore's refusal quotes that name, secret and all, in a traceback.
_NO_URL_CREDENTIALS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


#: The folder inside an output where chunked_fnet keeps a run's record and claims (zarr readers ignore it).
RUN_FOLDER = ".chunked_fnet"


def is_url(store: Any) -> bool:
    return isinstance(store, str) and bool(_URL.match(store)) and not store.startswith("file://")


def redact(text: str) -> str:
    """Hide user:password@ and signed-URL secrets in a URL or message."""
    text = _CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)


def describe(store: Any) -> str:
    """A short, credential-free name for a store, path or URL, for error messages and logs."""
    if isinstance(store, LocalStore):
        return str(store.root)
    if isinstance(store, FsspecStore):
        protocol = store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]
        return redact(store.path if "://" in store.path else f"{protocol}://{store.path}")  # HTTP paths are whole URLs
    if isinstance(store, zarr.abc.store.Store):
        return redact(repr(store))
    return redact(str(store))


def refuse_url_credentials(url: str) -> None:
    """Refuse ``s3://KEY:SECRET@bucket/...`` (and the like for gs://, az://) before any library sees it:
    those file systems would not use the credentials and would print them in their error; they come
    from the environment or the provider's config files (for S3: ``AWS_ACCESS_KEY_ID``, ``~/.aws``)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in _NO_URL_CREDENTIALS and _CREDENTIALS.match(url):
        raise InputError(
            f"{redact(url)}: {scheme}:// URLs cannot carry credentials; give them in the environment or the "
            "provider's config files (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)"
        )


def open_store(store: Any, *, read_only: bool, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A zarr store for a local path (``LocalStore``), an fsspec URL (``FsspecStore``) or a store object."""
    if isinstance(store, zarr.abc.store.Store):
        return store.with_read_only(read_only) if store.read_only != read_only else store
    if isinstance(store, str) and store.startswith("file://"):
        store = store[len("file://") :]
    if is_url(store):
        refuse_url_credentials(store)
        return FsspecStore.from_url(store, storage_options=dict(storage_options or {}), read_only=read_only)
    return LocalStore(Path(store), read_only=read_only)
