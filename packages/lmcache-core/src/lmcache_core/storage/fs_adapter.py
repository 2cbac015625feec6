"""Filesystem L2: one file per chunk in sharded directories, safe to share between processes and hosts.

URL: ``fs:///absolute/path?budget=200G&low_water=0.9&o_direct=0&fsync=0&mode=auto&inline_lookup=auto``
(plus the common parameters of :class:`~lmcache_core.storage.adapter.L2Adapter`). ``/`` itself is refused.

Layout: ``<root>/<ab>/<digest>.kv`` where ``digest`` is 32 hex digits of BLAKE2b(key) and ``ab``
its first two (256 shard directories, made when the tier opens). The full key is in the object
header, and a load checks it.

The rules that make one directory safe for many writers, readers and evictors at once:

* **Publish atomically.** A writer fills a private temporary file ``.<digest>.<pid>.<n>.tmp`` in
  the shard directory, holding an ``flock`` on it while it writes, and ``rename``\\ s it onto the
  final name. A published file is never
  written again; readers see an old complete file, a new complete file, or none.
* **Readers open, then read.** A load opens the file once and reads header and payload from
  that descriptor, so a file unlinked or replaced meanwhile is still read whole (POSIX keeps
  the inode until the last close; NFS clients keep it by renaming it ``.nfsXXXX``).
* **Evict by rename, then unlink.** An evictor renames the victim to a tombstone
  ``.<digest>.<pid>.<n>.dead`` and unlinks that: the final name disappears in one atomic step,
  so no reader finds a half-deleted chunk and no evictor touches a file another writer is still
  filling (temporary files are never victims).
* **Checksums catch the rest** (a torn file on a crash without ``fsync``, a file damaged on
  disk): the object is a miss and is removed. An object this reader cannot judge (a foreign
  format, a newer version, a checksum it cannot compute) is a miss and is left alone.
* **Stay inside the root.** Shard directories are opened with ``O_NOFOLLOW`` and every object
  operation is relative to that descriptor, so no read, write, scan, eviction or delete follows a
  symbolic link out of the tier. A link (or a FIFO, socket, device) at an object path is damage:
  the link itself is removed, never its target. A directory at an object path is remembered as
  a bad key. Objects are opened ``O_NONBLOCK``, so a FIFO never blocks a reader.
* **Read-only mode** (``mode=ro``, or detected when the tier opens: a probe file cannot be
  created, ``EROFS`` / ``EACCES`` / ``EPERM`` / ``ENOSPC``): lookups and loads only, nothing is
  ever written or deleted, damaged objects are remembered as bad keys. A detected read-only
  tier probes again every ``retry_max`` seconds and becomes writable when it can.
* **Lookups inline where nothing can stall** (``inline_lookup=auto``): on a local block or memory
  file system (ext4, xfs, btrfs, tmpfs, an overlay over those; see
  :mod:`~lmcache_core.storage.fs_kind`, decided from the mount table when the tier sets up) a
  lookup's ``lstat`` calls run on the caller's thread, without the hand-off to an I/O thread
  that the deadline needs. On NFS, CIFS, FUSE, Ceph, Lustre, 9p and any file system not known
  to be local, and for every load, store and delete, the deadline holds. ``inline_lookup=on``
  or ``off`` decides by hand (``off`` for a local file system on a disk that can hang, such as
  iSCSI or NBD).
* **Set-up failures degrade.** A root that cannot be made or read starts the tier unavailable
  (one log line, ``unavailable_events``); it retries with back-off and comes up on its own.

Byte budget (``budget``, 0 = none): each process keeps an estimate of the directory's bytes,
starting from a scan when the tier opens (so a restart finds what is on disk) and growing with
its own writes; when the estimate passes the budget, or ``rescan_interval`` seconds after the
last scan with writes since, one thread of one process (a non-blocking ``flock`` on
``<root>/.evict.lock``; evicting twice would still be safe) scans every shard, learns the true
size including other writers' files and temporary files, removes temporary files whose writer
is gone (no ``flock`` held, older than ``TMP_GRACE``), and removes least-recently-used objects
(oldest ``mtime``; loads refresh it at most every ``touch_interval`` seconds) down to
``low_water`` x budget. A process also scans once it has written its share of the headroom
since its last scan: ``min(budget - total, (1 - low_water) x budget) / P``, where ``P`` is the
number of processes with the tier open for writing (each holds an ``flock`` on a file in
``<root>/.writers/``). The directory (objects, temporary files, tombstones) then stays under
``budget x (2 - low_water) + P x W x S`` once every writer has scanned once, with ``W`` writes of
``S`` bytes in flight per process: the last scan left at most ``budget``, and all processes
together write at most ``(1 - low_water) x budget`` before one of them scans again.

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
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
from lmcache_core.storage.fs_kind import MountKind, mount_kind
from lmcache_core.storage.object_format import (
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
#: A temporary file whose writer holds no flock on it is a crashed writer's leftover once it is
#: this old (the grace covers the instant between creating the file and locking it); where flock
#: is not supported, STALE_TMP_AGE decides. Tombstones older than TOMBSTONE_AGE are a crashed
#: evictor's. The scan removes them.
TMP_GRACE = 2.0
STALE_TMP_AGE = 3600.0
TOMBSTONE_AGE = 60.0
#: ``inline_lookup`` values: auto (by the file system), or a forced yes / no.
INLINE_LOOKUP = {"auto": None, "on": True, "1": True, "true": True, "yes": True,
                 "off": False, "0": False, "false": False, "no": False}  # fmt: skip
#: errnos that make a tier read-only when its probe file cannot be created.
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)

_counter = itertools.count()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def _tmp_writer_gone(dir_fd: int, name: str) -> bool | None:
    """Whether the writer of temporary file ``name`` is gone (its flock is free); None when
    flock cannot tell (not supported here) or the file is gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None
    finally:
        os.close(fd)  # releases our lock, if we got it


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
    per_key = True

    def __init__(self, url: L2URL) -> None:
        super().__init__(url)
        if url.netloc not in ("", "localhost"):
            raise ValueError(f"url: expected fs:///absolute/path (no host), given {url.redacted}")
        if not url.path.startswith("/"):
            raise ValueError(f"url: expected an absolute path in fs:///path, given {url.redacted}")
        self.root = os.path.normpath(url.path)
        if not self.root.strip("/"):  # a link resolving to / is refused by _setup (realpath may stall)
            raise ValueError(f"url: expected a directory other than / for an fs tier, given {url.redacted}")
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
        self.mode = url.text_param("mode", "auto")
        if self.mode not in ("auto", "rw", "ro"):
            raise ValueError(f"{url.redacted}: parameter mode: expected auto, rw or ro, given {self.mode!r}")
        inline = url.text_param("inline_lookup", "auto")
        if inline.lower() not in INLINE_LOOKUP:
            raise ValueError(
                f"{url.redacted}: parameter inline_lookup: expected auto, on or off, given {inline!r}"
            )
        self._inline_setting = INLINE_LOOKUP[inline.lower()]
        #: Whether lookups run on the caller's thread (decided by _setup; the I/O threads until then).
        self.inline_lookup = False
        #: The file system of the root as found by the last set-up (None: not looked at).
        self.fs_kind: MountKind | None = None
        self._inline_why = ""
        self.read_only = self.mode == "ro"
        self._ro_reason = "mode=ro" if self.read_only else ""
        self._next_rw_probe = 0.0
        self._bounce = _Bounce()
        self._used = 0
        self._used_lock = threading.Lock()
        self._evicting = threading.Lock()
        self._last_scan = 0.0
        self._writes_since_scan = False
        self._written_since_scan = 0  # bytes this process wrote since its last scan
        self._allowance = 0  # bytes it may write before the next scan: its share of the headroom
        self._writer_fd: int | None = None
        self._writer_name = ""
        self.metrics.gauge("used_bytes", lambda: float(self._used))
        self.metrics.gauge("budget_bytes", lambda: float(self.budget))
        self.metrics.gauge("read_only", lambda: 1.0 if self.read_only else 0.0)
        self.metrics.gauge("inline_lookups", lambda: 1.0 if self.inline_lookup else 0.0)
        try:  # a stalled mount must not hang the engine's start: the set-up has a deadline too
            finished, _ = self._io.run(self._setup, self.timeout)
            if not finished:
                raise TierUnavailable(f"set-up passed its {self.timeout} s deadline")
        except TierUnavailable as e:
            self._mark_down(e)  # one log line and unavailable_events; _ping retries the set-up
            return
        except ValueError:  # the root resolves to /
            self._io.close(0.0)
            raise
        if self.budget and not self.read_only:
            self.enforce_budget()

    # ---- set-up and modes --------------------------------------------------------------------

    def _setup(self) -> None:
        """Make the root, decide read-write or read-only, make the shards; TierUnavailable when
        the root cannot be made or read; ValueError when it resolves to ``/``."""
        if os.path.realpath(self.root) == "/":
            raise ValueError(
                f"url: expected a directory other than / for an fs tier, given {self.url.redacted}"
            )
        try:
            os.makedirs(self.root, exist_ok=True)
            os.listdir(self.root)
        except OSError as e:
            raise TierUnavailable(f"root {self.root}: {reason_of(e)}: {e.strerror}") from None
        self._decide_inline()
        if self.mode == "ro":
            logger.warning("L2 %s: read-only (mode=ro): lookups and loads only", self.name)
            return
        try:
            err = self._probe_write()
        except OSError as e:  # EIO, ESTALE, ...: not a mode, the tier is not usable now
            raise TierUnavailable(f"root {self.root}: {reason_of(e)}: {e.strerror}") from None
        if err is not None and self.mode == "auto":
            self._go_read_only(err)
            return
        self._make_shards()

    def _decide_inline(self) -> None:
        """Run lookups inline when ``inline_lookup`` says so, or (auto) when the root's file
        system cannot stall; called by every set-up, so a remount is noticed on the next one."""
        if self._inline_setting is None:
            kind = self.fs_kind = mount_kind(self.root)
            inline, why = kind.local, kind.reason
        else:
            inline, why = self._inline_setting, "inline_lookup=" + ("on" if self._inline_setting else "off")
        if why != self._inline_why:
            logger.info("L2 %s: lookups %s (%s)", self.name,
                        "inline on the caller's thread" if inline else "on I/O threads under the deadline", why)  # fmt: skip
        self._inline_why = why
        self.inline_lookup = inline

    def _probe_write(self) -> str | None:
        """Create and remove a probe file in the root; None when that works, else the errno name."""
        probe = os.path.join(self.root, f".probe.{os.getpid()}.{next(_counter)}.tmp")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        except OSError as e:
            if e.errno in READ_ONLY_ERRNOS:
                return reason_of(e)
            raise
        try:
            os.unlink(probe)
        except OSError as e:
            return reason_of(e)
        return None

    def _go_read_only(self, reason: str) -> None:
        self.read_only = True
        self._ro_reason = reason
        self._next_rw_probe = time.monotonic() + self.health.retry_max
        self.metrics.inc("read_only_events")
        logger.warning("L2 %s: cannot write (%s): read-only, lookups and loads only; probing again every "
                       "%.1f s", self.name, reason, self.health.retry_max)  # fmt: skip

    def _maybe_writable_again(self) -> None:
        """In auto mode, every ``retry_max`` seconds: become writable when the probe succeeds."""
        if self.mode != "auto" or time.monotonic() < self._next_rw_probe:
            return
        self._next_rw_probe = time.monotonic() + self.health.retry_max
        try:
            err = self._probe_write()
        except OSError as e:
            err = reason_of(e)
        if err is None:
            self.read_only = False
            self._make_shards()
            logger.warning("L2 %s: writable again", self.name)

    def _make_shards(self) -> None:
        failed: dict[str, int] = {}
        for i in range(SHARDS):
            try:
                self._shard_fd(f"{i:02x}", create=True).close()
            except OSError as e:
                failed[reason_of(e)] = failed.get(reason_of(e), 0) + 1
        if failed:
            self.metrics.inc("shard_failures", sum(failed.values()))
            logger.warning("L2 %s: %s shard directories could not be made (%s); made on demand",
                           self.name, sum(failed.values()), ", ".join(failed))  # fmt: skip

    def _ping(self) -> None:
        self._setup()

    # ---- names ------------------------------------------------------------------------------

    def path_of(self, key: str) -> str:
        name = object_name(key)
        return os.path.join(self.root, name[:2], name + SUFFIX)

    @staticmethod
    def _sibling(name: str, kind: str) -> str:
        """A private name next to object file ``name``: ``.<digest>.<pid>.<n>.<kind>``."""
        return f".{name[: -len(SUFFIX)]}.{os.getpid()}.{next(_counter)}.{kind}"

    class _Dir:
        """An open shard directory (never a symlink); operations take names relative to ``fd``."""

        __slots__ = ("fd",)

        def __init__(self, fd: int) -> None:
            self.fd = fd

        def close(self) -> None:
            os.close(self.fd)

    def _shard_fd(self, shard: str, create: bool) -> FsAdapter._Dir:
        """Open shard directory ``shard`` without following a link; with ``create``, make it, and
        replace a link or file in its place (removing the link itself, never its target)."""
        path = os.path.join(self.root, shard)
        for _ in range(2):
            try:
                return FsAdapter._Dir(os.open(path, _DIR_FLAGS))
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    pass
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                self._damage(f"shard {shard} is not a directory")
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "shard is not a directory", path) from None
                os.unlink(path)  # the link or file itself
                os.mkdir(path, 0o755)
        return FsAdapter._Dir(os.open(path, _DIR_FLAGS))

    @contextmanager
    def _shard(self, name: str, create: bool = False) -> Iterator[int | None]:
        """The shard directory fd of object file ``name``; None when the shard does not exist."""
        try:
            d = self._shard_fd(name[:2], create)
        except FileNotFoundError:
            yield None
            return
        try:
            yield d.fd
        finally:
            d.close()

    def _damage(self, what: str) -> None:
        self.metrics.inc("damage_found")
        self.log.warning(f"damage:{what.split()[0]}", f"{what}; treated as damage")

    # ---- primitives --------------------------------------------------------------------------

    def _store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        out = [self._store_one(item) for item in items]
        self._after_writes()
        return out

    def _store_one(self, item: StoreItem) -> OpResult:
        if self.read_only:
            self._maybe_writable_again()
            if self.read_only:
                return OpResult(Status.FAILED, "read_only")
        name = object_name(item.key) + SUFFIX
        try:
            with self._shard(name, create=True) as dfd:
                assert dfd is not None
                return self._store_in(dfd, name, item)
        except OSError as e:
            return OpResult(Status.FAILED, reason_of(e))

    def _store_in(self, dfd: int, name: str, item: StoreItem) -> OpResult:
        if self.skip_existing:
            try:
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
                return OpResult(Status.PRESENT)
            except FileNotFoundError:
                pass
        payload = _bytes_view(item.payload)
        align = DIRECT_ALIGN if self.o_direct else 64
        header = encode_header(item.key, item.meta, payload, payload.nbytes, self.algorithm, align)
        tmp = self._sibling(name, "tmp")
        try:
            fd = self._open_tmp(dfd, tmp)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "my writer is alive" to scanners
            except OSError:
                pass  # no flock here: the scan falls back to the file's age
            try:
                if self.o_direct and self._fd_direct(fd):
                    self._write_direct(fd, header, payload)
                else:
                    write_all(fd, (header, payload))
                if self.fsync:
                    os.fsync(fd)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(fd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            return OpResult(Status.FAILED, reason_of(e))
        with self._used_lock:
            self._used += len(header) + payload.nbytes
            self._written_since_scan += len(header) + payload.nbytes
            self._writes_since_scan = True
        return OpResult(Status.OK)

    def _open_tmp(self, dfd: int, tmp: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        if self.o_direct:
            try:
                return os.open(tmp, flags | os.O_DIRECT, 0o644, dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._direct_unsupported(e)
        return os.open(tmp, flags, 0o644, dir_fd=dfd)

    @staticmethod
    def _fd_direct(fd: int) -> bool:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)

    def _write_direct(self, fd: int, header: bytes, payload: memoryview) -> None:
        total = len(header) + payload.nbytes
        buf = self._bounce.get(total)
        buf[: len(header)] = header
        buf[len(header) : total] = payload
        aligned = -(-total // DIRECT_ALIGN) * DIRECT_ALIGN
        write_all(fd, (memoryview(buf)[:aligned],))
        os.ftruncate(fd, total)

    def _direct_unsupported(self, e: OSError) -> None:
        if self.o_direct:
            self.o_direct = False
            logger.warning("L2 %s: O_DIRECT not supported here (%s); using buffered I/O", self.name, e)

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        """As :meth:`L2Adapter.lookup`; inline on the caller's thread when :attr:`inline_lookup`
        (the tier's probe, while it is down, keeps its deadline)."""
        if not self.inline_lookup or self.health.down:
            return super().lookup(keys)
        with self._io.inline():
            return super().lookup(keys)

    def _lookup(self, keys: Sequence[str]) -> list[bool]:
        """Two ``lstat`` per key: the shard must be a real directory (a lookup never reports an
        object behind a link), the object a regular file. Loads check again through an
        ``O_NOFOLLOW`` descriptor, so a shard swapped in between is still never followed."""
        out = []
        for key in keys:
            name = object_name(key) + SUFFIX
            shard = f"{self.root}/{name[:2]}"  # root is normalised and never "/": no os.path.join
            try:
                if not stat.S_ISDIR(os.lstat(shard).st_mode):
                    out.append(False)
                    continue
                st = os.lstat(f"{shard}/{name}")
            except OSError:
                out.append(False)
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(True)
                continue
            with self._shard(name) as dfd:
                if dfd is not None:
                    self._not_a_file(dfd, name, key, st.st_mode)
            out.append(False)
        return out

    def _not_a_file(self, dfd: int, name: str, key: str, mode: int) -> None:
        """Something other than a regular file at an object path: a directory is remembered as a
        bad key; a link, FIFO, socket or device is removed (the entry itself), or remembered on a
        read-only tier."""
        kind = "directory" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "special file"
        self._damage(f"{kind} at object path {self.root}/{name[:2]}/{name}")
        if stat.S_ISDIR(mode) or self.read_only:
            self.remember_bad(key, f"{kind.replace(' ', '_')}_at_object_path")
            return
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            self.remember_bad(key, f"{kind.replace(' ', '_')}_at_object_path")

    def _load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        return [self._load_one(r) for r in requests]

    def _load_one(self, req: LoadRequest) -> OpResult:
        name = object_name(req.key) + SUFFIX
        with self._shard(name) as dfd:
            if dfd is None:
                return OpResult(Status.MISS)
            return self._load_in(dfd, name, req)

    def _load_in(self, dfd: int, name: str, req: LoadRequest) -> OpResult:
        direct = self.o_direct
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_DIRECT if direct else 0)
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            return OpResult(Status.MISS)
        except OSError as e:
            if direct and e.errno == errno.EINVAL:
                self._direct_unsupported(e)
                return self._load_in(dfd, name, req)
            if e.errno == errno.ELOOP:  # a symlink at the object path
                self._not_a_file(dfd, name, req.key, stat.S_IFLNK)
                return OpResult(Status.CORRUPT, "symlink")
            return OpResult(Status.FAILED, reason_of(e))
        st = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._not_a_file(dfd, name, req.key, st.st_mode)
                return OpResult(Status.CORRUPT, "not_a_file")
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
            if not e.removable:
                return OpResult(Status.UNVERIFIABLE, e.reason)
            if self.read_only or not self._discard(dfd, name, st.st_ino if st is not None else None):
                self.remember_bad(req.key, e.reason)
            return OpResult(Status.CORRUPT, e.reason)
        except OSError as e:
            return OpResult(Status.FAILED, reason_of(e))
        finally:
            os.close(fd)

    def _load_direct(self, fd: int, size: int, req: LoadRequest) -> OpResult:
        if size == 0:
            raise CorruptObject("truncated", "empty file")
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
        if not self.read_only and time.time() - mtime >= self.touch_interval:
            try:
                os.utime(fd)
            except OSError:
                pass  # read-only share or not the owner: LRU age is best effort

    def _discard(self, dfd: int, name: str, ino: int | None) -> bool:
        """Remove ``name`` by rename-then-unlink, only if it is still the inode ``ino`` we judged."""
        try:
            if ino is not None and os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino != ino:
                return True  # a writer replaced it meanwhile: keep the new object
            dead = self._sibling(name, "dead")
            os.rename(name, dead, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.unlink(dead, dir_fd=dfd)
            return True
        except FileNotFoundError:
            return True  # someone else removed it
        except OSError:
            return False

    def _delete(self, keys: Sequence[str]) -> list[bool]:
        out = []
        for key in keys:
            name = object_name(key) + SUFFIX
            if self.read_only:
                out.append(False)
                continue
            with self._shard(name) as dfd:
                if dfd is None:
                    out.append(False)
                    continue
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    out.append(False)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out.append(False)
                    continue
                done = self._discard(dfd, name, None)
                if done:
                    with self._used_lock:
                        self._used = max(0, self._used - st.st_size)
                out.append(done)
        return out

    # ---- byte budget -------------------------------------------------------------------------

    def _after_writes(self) -> None:
        if not self.budget:
            return
        over = self._used > self.budget or self._written_since_scan > self._allowance
        stale = time.monotonic() - self._last_scan > self.rescan_interval and self._writes_since_scan
        if over:
            self.enforce_budget(wait=True)  # back-pressure: no more writes before a scan
        elif stale:
            self.enforce_budget()

    def scan(self) -> tuple[int, list[tuple[int, int, str, str]]]:
        """``(total bytes, [(mtime_ns, size, shard, name), ...])`` of every published object.

        The total includes temporary files still being written and tombstones. On the way it
        removes temporary files whose writer is gone and old tombstones (a read-only tier only
        looks). It never follows a symbolic link: a shard directory that is a link is skipped (the
        next store into it replaces the link by a real directory, never touching its target)."""
        now = time.time()
        total = 0
        files: list[tuple[int, int, str, str]] = []
        for i in range(SHARDS):
            shard = f"{i:02x}"
            try:
                d = self._shard_fd(shard, create=False)
            except OSError:
                continue
            try:
                total += self._scan_shard(d.fd, shard, now, files)
            finally:
                d.close()
        return total, files

    def _scan_shard(self, dfd: int, shard: str, now: float, files: list[tuple[int, int, str, str]]) -> int:
        total = 0
        with os.scandir(dfd) as it:
            entries = list(it)
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # evicted or replaced while we looked
            name = entry.name
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISLNK(st.st_mode) and name.endswith(SUFFIX) and not self.read_only:
                    self._damage(f"symlink at object path {self.root}/{shard}/{name}")
                    try:
                        os.unlink(name, dir_fd=dfd)  # the link itself, never its target
                    except OSError:
                        pass
                continue
            if name.endswith(SUFFIX) and not name.startswith("."):
                total += st.st_size
                files.append((st.st_mtime_ns, st.st_size, shard, name))
                continue
            if name.endswith(".tmp"):
                gone = _tmp_writer_gone(dfd, name) if now - st.st_mtime > TMP_GRACE else False
                if gone is None:
                    gone = now - st.st_mtime > STALE_TMP_AGE
            elif name.endswith(".dead"):
                gone = now - st.st_mtime > TOMBSTONE_AGE
            else:
                continue
            if gone and not self.read_only:
                try:
                    os.unlink(name, dir_fd=dfd)
                    self.metrics.inc("stale_removed")
                    continue
                except OSError:
                    pass
            total += st.st_size
        return total

    def enforce_budget(self, wait: bool = False) -> int:
        """Scan the directory and evict LRU objects down to ``low_water`` x budget; returns the
        number evicted (0 when another thread or process is already at it, or read-only). With
        ``wait``, wait for that other one and scan after it (a writer over its share does)."""
        if not self.budget or self.read_only or not self._evicting.acquire(blocking=wait):
            return 0
        try:
            try:
                lock_fd = os.open(
                    os.path.join(self.root, ".evict.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            except OSError as e:
                self.log.warning(f"evict:{reason_of(e)}", f"cannot open the eviction lock ({reason_of(e)})")
                return 0
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except OSError:
                    return 0  # another process is evicting
                with self._used_lock:
                    self._writes_since_scan = False
                    self._written_since_scan = 0
                self._register_writer()
                total, files = self.scan()
                writers = self._count_writers()
                evicted = 0
                if total > self.budget:
                    target = int(self.budget * self.low_water)
                    files.sort()
                    for _mtime, size, shard, name in files:
                        if total <= target:
                            break
                        if not self._evict(shard, name):
                            continue  # gone already (another evictor, a delete)
                        total -= size
                        evicted += 1
                        self.metrics.inc("evictions")
                        self.metrics.inc("evicted_bytes", size)
                with self._used_lock:
                    self._used = total
                    headroom = min(max(0, self.budget - total), int(self.budget * (1 - self.low_water)))
                    self._allowance = headroom // writers
                self._last_scan = time.monotonic()
                return evicted
            finally:
                os.close(lock_fd)  # releases the flock
        finally:
            self._evicting.release()

    WRITERS = ".writers"

    def _register_writer(self) -> None:
        """Hold an flock on ``<root>/.writers/<host>.<pid>.<n>`` while this adapter is open, so
        that every evictor knows how many processes share the budget (best effort: 1 if not)."""
        if self._writer_fd is not None:
            return
        d = os.path.join(self.root, self.WRITERS)
        try:
            os.makedirs(d, exist_ok=True)
            name = f"{os.uname().nodename}.{os.getpid()}.{next(_counter)}"
            fd = os.open(os.path.join(d, name), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._writer_fd, self._writer_name = fd, name
        except OSError as e:
            self.log.warning(f"writers:{reason_of(e)}", f"cannot register as a writer ({reason_of(e)})")

    def _count_writers(self) -> int:
        """Processes with this tier open for writing (their flock held); removes the entries of
        processes that are gone."""
        d = os.path.join(self.root, self.WRITERS)
        try:
            dfd = os.open(d, _DIR_FLAGS)
        except OSError:
            return 1
        alive = 0
        try:
            for name in os.listdir(dfd):
                gone = _tmp_writer_gone(dfd, name)
                if gone:
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except OSError:
                        pass
                elif gone is False:
                    alive += 1
        finally:
            os.close(dfd)
        return max(1, alive)

    def _close(self) -> None:
        if self._writer_fd is not None:
            fd, self._writer_fd = self._writer_fd, None
            try:
                os.unlink(os.path.join(self.root, self.WRITERS, self._writer_name))
            except OSError:
                pass
            os.close(fd)

    def _evict(self, shard: str, name: str) -> bool:
        try:
            d = self._shard_fd(shard, create=False)
        except OSError:
            return False
        try:
            dead = self._sibling(name, "dead")
            os.rename(name, dead, src_dir_fd=d.fd, dst_dir_fd=d.fd)
            os.unlink(dead, dir_fd=d.fd)
            return True
        except OSError:
            return False
        finally:
            d.close()
