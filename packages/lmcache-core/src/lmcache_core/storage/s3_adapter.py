"""S3-compatible L2 through boto3 (AWS S3, MinIO, Ceph RGW, moto).

URL: ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``. Other
parameters: ``multipart_threshold`` and ``multipart_chunksize`` (default 8M: larger chunks are
uploaded and downloaded as parallel parts), ``max_concurrency`` (threads per transfer, default
4), ``connect_timeout`` / ``read_timeout`` (seconds, default 2 and 30), ``addressing``
(``path`` or ``virtual``, default ``path``), plus the common ones of
:class:`~lmcache_core.storage.adapter.L2Adapter`. Credentials come from boto3's usual chain
(environment, config files, instance role), never from the URL.

Objects are named ``<prefix>/<ab>/<digest>.kv`` like the filesystem tier's files; the header
inside holds the full key. An object is written by one ``PUT`` (or one multipart upload,
which S3 publishes atomically on completion), so readers never see a partial chunk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from lmcache_core.storage.adapter import (
    L2Adapter,
    LoadRequest,
    OpResult,
    Status,
    StoreItem,
    TierUnavailable,
    reason_of,
)
from lmcache_core.storage.fs_adapter import SUFFIX, object_name
from lmcache_core.storage.object_format import CorruptObject, encode_object, split_object
from lmcache_core.storage.url import L2URL

_MISSING = ("404", "NoSuchKey", "NotFound")


def check_endpoint(url: str, endpoint: str) -> None:
    """ValueError naming ``endpoint_url`` unless it is ``http(s)://host[:port][/path]``."""
    from urllib.parse import urlsplit

    from lmcache_core.storage.url import url_port

    where = f"{url}: parameter endpoint_url"
    try:
        parts = urlsplit(endpoint)
    except ValueError as e:
        raise ValueError(f"{where}: expected http(s)://host:port, given {endpoint!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: expected http(s)://host:port, given {endpoint!r}")
    url_port(f"{where} port", parts)


class S3Adapter(L2Adapter):
    """L2 tier under one bucket and prefix of an S3-compatible store."""

    schemes = ("s3",)
    per_key = True

    def __init__(self, url: L2URL) -> None:
        super().__init__(url)
        import boto3
        import botocore.config
        import botocore.exceptions
        from boto3.s3.transfer import TransferConfig

        if not url.hostname:
            raise ValueError(f"url: expected s3://bucket/prefix, given {url.redacted}")
        self.bucket = url.netloc
        self.prefix = url.path.strip("/")
        endpoint = url.text_param("endpoint_url", "") or None
        if endpoint is not None:
            check_endpoint(url.redacted, endpoint)
        region = url.text_param("region", "") or None
        addressing = url.text_param("addressing", "path")
        if addressing not in ("path", "virtual"):
            raise ValueError(
                f"{url.redacted}: parameter addressing: expected path or virtual, given {addressing!r}"
            )
        threshold = url.bytes_param("multipart_threshold", 8 << 20)
        chunksize = url.bytes_param("multipart_chunksize", 8 << 20)
        concurrency = url.int_param("max_concurrency", 4, minimum=1)
        config = botocore.config.Config(
            connect_timeout=url.float_param("connect_timeout", 2.0),
            read_timeout=url.float_param("read_timeout", 30.0),
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, self.in_flight * concurrency),
            s3={"addressing_style": addressing},
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, config=config
        )
        self.transfer = TransferConfig(
            multipart_threshold=threshold, multipart_chunksize=chunksize, max_concurrency=concurrency
        )
        self._client_error = botocore.exceptions.ClientError
        self._down_errors: tuple[type[BaseException], ...] = (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.NoCredentialsError,
        )

    def object_key(self, key: str) -> str:
        name = object_name(key)
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}{name[:2]}/{name}{SUFFIX}"

    def _code(self, e: BaseException) -> str:
        response = getattr(e, "response", None) or {}
        return str(response.get("Error", {}).get("Code", type(e).__name__))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._down_errors as e:
            raise TierUnavailable(f"{type(e).__name__}: {e}") from e

    def _ping(self) -> None:
        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
        except self._client_error as e:
            raise TierUnavailable(f"bucket {self.bucket}: {self._code(e)}") from e

    def _store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        out = []
        for item in items:
            body = io.BytesIO(encode_object(item.key, item.meta, item.payload, self.algorithm))
            try:
                self._call(self.client.upload_fileobj, body, self.bucket, self.object_key(item.key),
                           Config=self.transfer)  # fmt: skip
                out.append(OpResult(Status.OK))
            except self._client_error as e:
                out.append(OpResult(Status.FAILED, self._code(e)))
            except TierUnavailable:
                raise
            except Exception as e:  # boto3's S3UploadFailedError wraps the ClientError
                out.append(OpResult(Status.FAILED, reason_of(e)))
        return out

    def _lookup(self, keys: Sequence[str]) -> list[bool]:
        out = []
        for key in keys:
            try:
                self._call(self.client.head_object, Bucket=self.bucket, Key=self.object_key(key))
                out.append(True)
            except self._client_error as e:
                if self._code(e) not in _MISSING:
                    self.log.warning(f"lookup:{self._code(e)}", f"lookup of {key} failed ({self._code(e)})")
                out.append(False)
        return out

    def _load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        return [self._load_one(r) for r in requests]

    def _load_one(self, req: LoadRequest) -> OpResult:
        sink = io.BytesIO()
        name = self.object_key(req.key)
        try:
            self._call(self.client.download_fileobj, self.bucket, name, sink, Config=self.transfer)
        except self._client_error as e:
            code = self._code(e)
            return OpResult(Status.MISS) if code in _MISSING else OpResult(Status.FAILED, code)
        data = sink.getbuffer()
        try:
            try:
                header, payload = split_object(data, expect_key=req.key)
            except CorruptObject as e:
                if not e.removable:  # a foreign or newer object: not ours to judge
                    return OpResult(Status.UNVERIFIABLE, e.reason)
                self._delete([req.key])
                return OpResult(Status.CORRUPT, e.reason)
            buf = req.alloc(header)
            if buf is None:
                return OpResult(Status.REJECTED, "declined", header)
            memoryview(buf).cast("B")[:] = payload
            del payload
            return OpResult(Status.HIT, "", header, buf)
        finally:
            del data

    def _delete(self, keys: Sequence[str]) -> list[bool]:
        out = [False] * len(keys)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            part = keys[start : start + 1000]
            try:
                reply = self._call(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.object_key(k)} for k in part], "Quiet": False},
                )
            except self._client_error:
                continue
            deleted = {d["Key"] for d in reply.get("Deleted", [])}
            for i, k in enumerate(part):
                out[start + i] = self.object_key(k) in deleted
        return out
