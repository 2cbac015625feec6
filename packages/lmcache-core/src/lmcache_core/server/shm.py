"""Shared-memory segments owned by the server, carved into chunk buffers (slots).

The server's L1 lives in files under ``shm_dir`` (``/dev/shm``: tmpfs) named
``lmcache-srv.<server pid>.<random>.<n>``, mode 0600 (only the server's user, and clients running
as that user, can map them). :class:`ShmArena` creates segments on demand and hands out aligned
byte ranges of them as uint8 torch tensors; clients map the same files and view the same bytes
(:meth:`lmcache_core.server.client.CacheClient.view`). Segment memory is committed when the
segment is made (``posix_fallocate``), so a full ``/dev/shm`` fails there with a clear error
instead of a SIGBUS on first touch.

Clean-up: :meth:`ShmArena.close` unlinks every segment; after a crash (kill -9) the next server's
:func:`remove_stale` unlinks the segments whose server pid is no longer alive.
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PREFIX = "lmcache-srv."
#: Byte alignment of every slot (a cache line pair; every dtype's alignment divides it).
ALIGN = 256


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale(directory: str) -> list[str]:
    """Unlink every segment in ``directory`` left by a server process that no longer exists;
    returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        parts = name[len(PREFIX) :].split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        if _pid_alive(int(parts[0])):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        except PermissionError:
            logger.warning("stale segment %s: cannot remove (another user's)", name)
            continue
        removed.append(name)
    if removed:
        logger.warning("removed %d stale shared-memory segments of dead servers: %s", len(removed), removed)
    return removed


@dataclass
class _Segment:
    name: str
    size: int
    map: mmap.mmap
    tensor: torch.Tensor
    base: int
    free: list[list[int]] = field(default_factory=list)  # sorted [offset, size] runs


class ShmArena:
    """Aligned byte ranges of shared-memory segments in ``directory``.

    ``segment_bytes``: size of each new segment (a larger request gets a segment of its own);
    ``limit_bytes``: most bytes of segments in all (MemoryError beyond). Thread-safe.
    """

    def __init__(self, directory: str, segment_bytes: int, limit_bytes: int) -> None:
        for name, v in (("segment_bytes", segment_bytes), ("limit_bytes", limit_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, given {v!r}")
        if not os.path.isdir(directory):
            raise ValueError(f"shm_dir: expected an existing directory (tmpfs), given {directory!r}")
        self.directory = directory
        self.segment_bytes = _align(segment_bytes)
        self.limit_bytes = limit_bytes
        self._token = secrets.token_hex(4)
        self._segments: list[_Segment] = []
        self._by_base: list[int] = []  # sorted base addresses, parallel to _order
        self._order: list[_Segment] = []
        self._sizes: dict[int, int] = {}  # data_ptr -> aligned size of every live allocation
        self._lock = threading.Lock()
        self._closed = False

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._segments]

    @property
    def mapped_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    def segment_tensors(self) -> list[torch.Tensor]:
        """uint8 ``[segment_bytes]`` over each segment made so far (to page-lock them)."""
        with self._lock:
            return [s.tensor for s in self._segments]

    def add_segment(self) -> str:
        """Make a segment now (at start, so the first store does not wait for it); its name."""
        with self._lock:
            return self._new_segment(self.segment_bytes).name

    def allocate(self, nbytes: int) -> torch.Tensor:
        """A uint8 tensor ``[nbytes]`` in shared memory, aligned to :data:`ALIGN` bytes."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"nbytes: expected a positive int, given {nbytes!r}")
        need = _align(nbytes)
        with self._lock:
            if self._closed:
                raise RuntimeError("ShmArena: closed")
            for seg in self._segments:
                at = self._take(seg, need)
                if at is not None:
                    return self._view(seg, at, nbytes, need)
            seg = self._new_segment(max(self.segment_bytes, need))
            at = self._take(seg, need)
            assert at is not None
            return self._view(seg, at, nbytes, need)

    def free(self, buffer: torch.Tensor) -> None:
        """Give back a tensor from :meth:`allocate` (its bytes may be handed out again)."""
        ptr = int(buffer.data_ptr())
        with self._lock:
            size = self._sizes.pop(ptr, None)
            if size is None:
                raise ValueError("buffer: expected a live allocation of this arena, given another tensor")
            seg = self._owner(ptr)
            offset = ptr - seg.base
            runs = seg.free
            i = bisect.bisect_left(runs, [offset, 0])
            runs.insert(i, [offset, size])
            if i + 1 < len(runs) and runs[i][0] + runs[i][1] == runs[i + 1][0]:  # merge right
                runs[i][1] += runs.pop(i + 1)[1]
            if i > 0 and runs[i - 1][0] + runs[i - 1][1] == runs[i][0]:  # merge left
                runs[i - 1][1] += runs.pop(i)[1]

    def locate(self, buffer: torch.Tensor) -> tuple[str, int]:
        """``(segment name, byte offset)`` of a tensor from :meth:`allocate`."""
        ptr = int(buffer.data_ptr())
        with self._lock:
            seg = self._owner(ptr)
            return seg.name, ptr - seg.base

    def close(self) -> None:
        """Unlink every segment (mappings stay valid until their views are gone)."""
        with self._lock:
            self._closed = True
            segments, self._segments = self._segments, []
        for seg in segments:
            try:
                os.unlink(os.path.join(self.directory, seg.name))
            except FileNotFoundError:
                pass

    # ---- internals (lock held) -------------------------------------------------------------------

    def _take(self, seg: _Segment, need: int) -> int | None:
        for i, (offset, size) in enumerate(seg.free):
            if size >= need:
                if size == need:
                    seg.free.pop(i)
                else:
                    seg.free[i] = [offset + need, size - need]
                return offset
        return None

    def _view(self, seg: _Segment, at: int, nbytes: int, need: int) -> torch.Tensor:
        t = seg.tensor[at : at + nbytes]
        self._sizes[int(t.data_ptr())] = need
        return t

    def _owner(self, ptr: int) -> _Segment:
        i = bisect.bisect_right(self._by_base, ptr) - 1
        if i < 0 or ptr >= self._order[i].base + self._order[i].size:
            raise ValueError("buffer: expected a tensor inside this arena's shared memory")
        return self._order[i]

    def _new_segment(self, size: int) -> _Segment:
        import torch

        if sum(s.size for s in self._segments) + size > self.limit_bytes:
            raise MemoryError(
                f"shared memory: {self.limit_bytes} bytes of segments in use; no room for {size} more"
            )
        name = f"{PREFIX}{os.getpid()}.{self._token}.{len(self._segments)}"
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                os.unlink(path)
                if e.errno in (errno.ENOSPC, errno.ENOMEM):
                    raise MemoryError(
                        f"shared memory: {self.directory} has no room for a {size}-byte segment "
                        f"(enlarge the tmpfs, e.g. a bigger /dev/shm, or lower l1_bytes)"
                    ) from None
                raise
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        tensor = torch.frombuffer(m, dtype=torch.uint8)
        seg = _Segment(name, size, m, tensor, int(tensor.data_ptr()), [[0, size]])
        self._segments.append(seg)
        i = bisect.bisect_left(self._by_base, seg.base)
        self._by_base.insert(i, seg.base)
        self._order.insert(i, seg)
        logger.info("shared-memory segment %s: %d bytes", path, size)
        return seg
