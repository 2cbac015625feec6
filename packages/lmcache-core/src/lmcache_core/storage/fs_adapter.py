"""Filesystem L2: one file per chunk in sharded directories, safe to share between processes and hosts.

URL: ``fs:///absolute/path?budget=200G&low_water=0.9&o_direct=0&fsync=0`` (plus the common
parameters of :class:`~lmcache_core.storage.adapter.L2Adapter`).

Layout: ``<root>/<ab>/<digest>.kv`` where ``digest`` is 32 hex digits of BLAKE2b(key) and ``ab``
its first two (256 shard directories, made when the tier opens). The full key is in the object
header, and a load checks it.

The rules that make one directory safe for many writers, readers and evictors at once:

* **Publish atomically.** A writer fills a private temporary file ``.<digest>.<pid>.<n>.tmp`` in
  the shard directory and ``rename``\\ s it onto the final name. A published file is never
  written again; readers see an old complete file, a new complete file, or none.
* **Readers open, then read.** A load opens the file once and reads header and payload from
  that descriptor, so a file unlinked or replaced meanwhile is still read whole (POSIX keeps
  the inode until the last close; NFS clients keep it by renaming it ``.nfsXXXX``).
* **Evict by rename, then unlink.** An evictor renames the victim to a tombstone
  ``.<digest>.<pid>.<n>.dead`` and unlinks that: the final name disappears in one atomic step,
  so no reader finds a half-deleted chunk and no evictor touches a file another writer is still
  filling (temporary files are never victims).
* **Checksums catch the rest** (a torn file on a crash without ``fsync``, a file damaged on
  disk): the object is a miss and is removed.

Byte budget (``budget``, 0 = none): each process keeps an estimate of the directory's bytes,
starting from a scan when the tier opens (so a restart finds what is on disk) and growing with
its own writes; when the estimate passes the budget, or ``rescan_interval`` seconds after the
last scan with writes since, one thread of one process (a non-blocking ``flock`` on
``<root>/.evict.lock``; evicting twice would still be safe) scans every shard, learns the true
size including other writers' files, and removes least-recently-used files (oldest ``mtime``;
loads refresh it at most every ``touch_interval`` seconds) down to ``low_water`` x budget. The
directory can overshoot the budget by what peers wrote since their last scan.

``o_direct=1`` bypasses the page cache with ``O_DIRECT`` through a page-aligned bounce buffer
per thread (headers are then padded to 4 KiB); a file system without ``O_DIRECT`` (tmpfs)
falls back to buffered I/O with one log line. ``fsync=1`` syncs each file before publishing it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import logging
import mmap
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from lmcache_core.storage.adapter import L2Adapter, LoadRequest, OpResult, Status, StoreItem, reason_of
from lmcache_core.storage.object_format import (
    FIXED_SIZE,
    MAX_HEADER,
    CorruptObject,
    decode_header,
    encode_header,
    header_size_needed,
    verify_payload,
)
from lmcache_core.storage.url import L2URL

logger = logging.getLogger(__name__)

SUFFIX = ".kv"
SHARDS = 256
DIRECT_ALIGN = 4096
#: Temporary files older than this are a crashed writer's leftovers; tombstones older than
#: TOMBSTONE_AGE a crashed evictor's. The janitor scan removes both.
STALE_TMP_AGE = 3600.0
TOMBSTONE_AGE = 60.0

_counter = itertools.count()


def object_name(key: str) -> str:
    """32 hex digits naming ``key``'s object (the same on every host and process)."""
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _bytes_view(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def write_all(fd: int, buffers: Sequence[Any]) -> int:
    """Write every buffer to ``fd`` in order with ``writev``, resuming after partial writes."""
    views = [v for v in (_bytes_view(b) for b in buffers) if v.nbytes]
    total = 0
    while views:
        n = os.writev(fd, views)
        total += n
        while n and views:
            if n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
    return total


def read_into(fd: int, buffer: Any, offset: int) -> None:
    """Fill ``buffer`` from ``fd`` at ``offset``; CorruptObject('truncated') at an early end of file."""
    view = _bytes_view(buffer)
    while view.nbytes:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise CorruptObject("truncated", "file ended before the payload did")
        view = view[n:]
        offset += n


class _Bounce(threading.local):
    """A page-aligned buffer per thread for O_DIRECT, grown on demand."""

    buf: mmap.mmap | None = None

    def get(self, nbytes: int) -> mmap.mmap:
        size = -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN
        if self.buf is None or len(self.buf) < size:
            if self.buf is not None:
                self.buf.close()
            self.buf = mmap.mmap(-1, size)
        return self.buf


class FsAdapter(L2Adapter):
    """L2 tier in a local or shared directory (see the module docstring for the sharing rules)."""

    schemes = ("fs",)

    def __init__(self, url: L2URL) -> None:
        super().__init__(url)
        if url.netloc not in ("", "localhost"):
            raise ValueError(f"url: expected fs:///absolute/path (no host), given {url.redacted}")
        if not url.path.startswith("/"):
            raise ValueError(f"url: expected an absolute path in fs:///path, given {url.redacted}")
        self.root = os.path.normpath(url.path)
        self.budget = url.bytes_param("budget", 0, allow_zero=True)
        self.low_water = url.float_param("low_water", 0.9)
        if not 0.0 < self.low_water <= 1.0:
            raise ValueError(
                f"{url.redacted}: parameter low_water: expected in (0, 1], given {self.low_water}"
            )
        self.o_direct = url.bool_param("o_direct", False)
        self.fsync = url.bool_param("fsync", False)
        self.touch_interval = url.float_param("touch_interval", 1.0)
        self.rescan_interval = url.float_param("rescan_interval", 10.0)
        self.skip_existing = url.bool_param("skip_existing", True)
        self._bounce = _Bounce()
        self._used = 0
        self._used_lock = threading.Lock()
        self._evicting = threading.Lock()
        self._last_scan = 0.0
        self._writes_since_scan = False
        os.makedirs(self.root, exist_ok=True)
        for i in range(SHARDS):
            os.makedirs(os.path.join(self.root, f"{i:02x}"), exist_ok=True)
        self.metrics.gauge("used_bytes", lambda: float(self._used))
        self.metrics.gauge("budget_bytes", lambda: float(self.budget))
        if self.budget:
            self.enforce_budget()

    # ---- names ------------------------------------------------------------------------------

    def path_of(self, key: str) -> str:
        name = object_name(key)
        return os.path.join(self.root, name[:2], name + SUFFIX)

    @staticmethod
    def _sibling(path: str, kind: str) -> str:
        d, f = os.path.split(path)
        return os.path.join(d, f".{f[: -len(SUFFIX)]}.{os.getpid()}.{next(_counter)}.{kind}")

    # ---- primitives --------------------------------------------------------------------------

    def _store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        out = [self._store_one(item) for item in items]
        self._after_writes()
        return out

    def _store_one(self, item: StoreItem) -> OpResult:
        path = self.path_of(item.key)
        if self.skip_existing and os.path.exists(path):
            return OpResult(Status.PRESENT)
        payload = _bytes_view(item.payload)
        align = DIRECT_ALIGN if self.o_direct else 64
        header = encode_header(item.key, item.meta, payload, payload.nbytes, self.algorithm, align)
        tmp = self._sibling(path, "tmp")
        try:
            if self.o_direct:
                self._write_direct(tmp, header, payload)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    write_all(fd, (header, payload))
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            os.rename(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return OpResult(Status.FAILED, reason_of(e))
        with self._used_lock:
            self._used += len(header) + payload.nbytes
            self._writes_since_scan = True
        return OpResult(Status.OK)

    def _write_direct(self, tmp: str, header: bytes, payload: memoryview) -> None:
        total = len(header) + payload.nbytes
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT, 0o644)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct_unsupported(e)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, (header, payload))
            finally:
                os.close(fd)
            return
        try:
            buf = self._bounce.get(total)
            buf[: len(header)] = header
            buf[len(header) : total] = payload
            aligned = -(-total // DIRECT_ALIGN) * DIRECT_ALIGN
            write_all(fd, (memoryview(buf)[:aligned],))
            os.ftruncate(fd, total)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _direct_unsupported(self, e: OSError) -> None:
        if self.o_direct:
            self.o_direct = False
            logger.warning("L2 %s: O_DIRECT not supported here (%s); using buffered I/O", self.name, e)

    def _lookup(self, keys: Sequence[str]) -> list[bool]:
        out = []
        for key in keys:
            try:
                os.stat(self.path_of(key))
                out.append(True)
            except OSError:
                out.append(False)
        return out

    def _load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        return [self._load_one(r) for r in requests]

    def _load_one(self, req: LoadRequest) -> OpResult:
        path = self.path_of(req.key)
        direct = self.o_direct
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
        except FileNotFoundError:
            return OpResult(Status.MISS)
        except OSError as e:
            if direct and e.errno == errno.EINVAL:
                self._direct_unsupported(e)
                return self._load_one(req)
            return OpResult(Status.FAILED, reason_of(e))
        st = None
        try:
            st = os.fstat(fd)
            if direct:
                return self._load_direct(fd, st.st_size, req)
            first = os.pread(fd, MAX_HEADER, 0)
            header_len = header_size_needed(first)
            if header_len > len(first):
                raise CorruptObject("bad_header", f"header_len {header_len} past the end of the file")
            header = decode_header(first, expect_key=req.key)
            if st.st_size != header.total_len:
                raise CorruptObject("truncated", f"file {st.st_size} bytes, header says {header.total_len}")
            buf = req.alloc(header)
            if buf is None:
                return OpResult(Status.REJECTED, "declined", header)
            if header.payload_len <= len(first) - header_len:  # small object: already read
                _bytes_view(buf)[:] = memoryview(first)[header_len : header.total_len]
            else:
                read_into(fd, buf, header_len)
            verify_payload(header, buf)
            self._touch(fd, st.st_mtime)
            return OpResult(Status.HIT, "", header, buf)
        except CorruptObject as e:
            self._discard(path, st.st_ino if st is not None else None)
            return OpResult(Status.CORRUPT, e.reason)
        except OSError as e:
            return OpResult(Status.FAILED, reason_of(e))
        finally:
            os.close(fd)

    def _load_direct(self, fd: int, size: int, req: LoadRequest) -> OpResult:
        if size < FIXED_SIZE:
            raise CorruptObject("truncated", f"file {size} bytes")
        buf = self._bounce.get(size)
        aligned = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
        view = memoryview(buf)[:aligned]
        got = 0
        while got < size:
            n = os.preadv(fd, [view[got:]], got)
            if n == 0:
                break
            got += n
        header = decode_header(view[: min(size, MAX_HEADER)], expect_key=req.key)
        if size != header.total_len or got < size:
            raise CorruptObject("truncated", f"file {size} bytes, header says {header.total_len}")
        target = req.alloc(header)
        if target is None:
            return OpResult(Status.REJECTED, "declined", header)
        _bytes_view(target)[:] = view[header.header_len : header.total_len]
        verify_payload(header, target)
        return OpResult(Status.HIT, "", header, target)

    def _touch(self, fd: int, mtime: float) -> None:
        """Refresh the file's mtime (its LRU age) at most every ``touch_interval`` seconds."""
        if time.time() - mtime >= self.touch_interval:
            try:
                os.utime(fd)
            except OSError:
                pass  # read-only share or not the owner: LRU age is best effort

    def _discard(self, path: str, ino: int | None) -> bool:
        """Remove ``path`` by rename-then-unlink, only if it is still the inode ``ino`` we judged."""
        try:
            if ino is not None and os.stat(path).st_ino != ino:
                return False  # a writer replaced it meanwhile: keep the new object
            dead = self._sibling(path, "dead")
            os.rename(path, dead)
            os.unlink(dead)
            return True
        except OSError:
            return False

    def _delete(self, keys: Sequence[str]) -> list[bool]:
        out = []
        for key in keys:
            path = self.path_of(key)
            try:
                size = os.stat(path).st_size
            except OSError:
                out.append(False)
                continue
            done = self._discard(path, None)
            if done:
                with self._used_lock:
                    self._used = max(0, self._used - size)
            out.append(done)
        return out

    # ---- byte budget -------------------------------------------------------------------------

    def _after_writes(self) -> None:
        if not self.budget:
            return
        over = self._used > self.budget
        stale = time.monotonic() - self._last_scan > self.rescan_interval and self._writes_since_scan
        if over or stale:
            self.enforce_budget()

    def scan(self) -> tuple[int, list[tuple[int, int, str]]]:
        """``(total bytes, [(mtime_ns, size, path), ...])`` of every published object; removes
        stale temporary files and tombstones on the way."""
        now = time.time()
        total, files = 0, []
        for i in range(SHARDS):
            shard = os.path.join(self.root, f"{i:02x}")
            try:
                entries = list(os.scandir(shard))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # evicted or replaced while we looked
                name = entry.name
                if name.endswith(SUFFIX) and not name.startswith("."):
                    total += st.st_size
                    files.append((st.st_mtime_ns, st.st_size, entry.path))
                elif (name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_AGE) or (
                    name.endswith(".dead") and now - st.st_mtime > TOMBSTONE_AGE
                ):
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass
        return total, files

    def enforce_budget(self) -> int:
        """Scan the directory and evict LRU objects down to ``low_water`` x budget; returns the
        number evicted (0 when another thread or process is already at it)."""
        if not self.budget or not self._evicting.acquire(blocking=False):
            return 0
        try:
            lock_fd = os.open(
                os.path.join(self.root, ".evict.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return 0  # another process is evicting
                with self._used_lock:
                    self._writes_since_scan = False
                total, files = self.scan()
                evicted = 0
                if total > self.budget:
                    target = int(self.budget * self.low_water)
                    files.sort()
                    for _mtime, size, path in files:
                        if total <= target:
                            break
                        dead = self._sibling(path, "dead")
                        try:
                            os.rename(path, dead)
                            os.unlink(dead)
                        except OSError:
                            continue  # gone already (another evictor, a delete)
                        total -= size
                        evicted += 1
                        self.metrics.inc("evictions")
                        self.metrics.inc("evicted_bytes", size)
                with self._used_lock:
                    self._used = total
                self._last_scan = time.monotonic()
                return evicted
            finally:
                os.close(lock_fd)  # releases the flock
        finally:
            self._evicting.release()
