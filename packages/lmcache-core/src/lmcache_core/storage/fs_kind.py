"""Which file system holds a directory, and whether its metadata calls can stall.

A network, cluster or FUSE file system (NFS, CIFS/SMB, Ceph, Lustre, GPFS, 9p, sshfs, ...) can
block a system call for ever when its server or daemon hangs; a local block or memory file system
(ext4, xfs, btrfs, tmpfs, ...) answers an ``lstat`` from memory or its own disk. The fs tier runs
lookups inline on the caller's thread only on the second kind (see
:mod:`~lmcache_core.storage.fs_adapter`).

The answer comes from the mount table (``/proc/self/mountinfo``): reading it never touches the
file system in question, so it cannot stall. The mount of a path is the one with the longest
mount point that is a prefix of it (the last one listed when several are stacked on one point).
A path counts as local only when its mount's type is on :data:`LOCAL_TYPES` *and* every mount
below it is too (a shard directory may be a mount point of its own). An overlay counts as local
unless a lower or upper directory named in its options lies on a mount that is not. Anything
unknown (a type not listed, no mount table) counts as "can stall": the safe side.

Nothing here runs at import time; :func:`mount_kind` resolves the path (``realpath``, which
may touch the file system: call it where a stall is bounded).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

#: Local block-device and memory file systems: their metadata calls do not wait on a network or
#: a user-space daemon. ``overlay`` is checked further (its lower and upper directories).
LOCAL_TYPES = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "f2fs", "jfs", "reiserfs", "nilfs2",
        "zfs", "tmpfs", "ramfs", "overlay", "squashfs", "erofs", "vfat", "msdos", "exfat", "ntfs3",
        "hfsplus", "iso9660", "udf",
    }
)  # fmt: skip
_OVERLAY_DIRS = ("lowerdir", "upperdir", "lowerdir+", "datadir+")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of a mount table: where (``/mnt/kv``), what type (``nfs4``, ``fuse.sshfs``),
    from where (``10.0.0.5:/export``, ``/dev/vda``) and its file-system options."""

    mount_point: str
    fstype: str
    source: str
    options: str


@dataclass(frozen=True)
class MountKind:
    """What :func:`classify` found for a path.

    ``fstype``: the type of its mount (``"ext4"``, ``"nfs4"``; ``""`` when no mount was found);
    ``mount_point``: that mount's point (``"/work"``); ``local``: True when neither it nor any
    mount below the path can stall (see the module docstring); ``reason``: one line saying why
    (``"ext4 at /work is local"``, ``"nfs4 at /data/kv/ab below the path can stall"``)."""

    fstype: str
    mount_point: str
    local: bool
    reason: str


def _unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes in a mountinfo field (``\040`` space, ``\011`` tab,
    ``\012`` newline, ``\134`` backslash)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order; lines that do not parse
    (no ``-`` separator, too few fields) are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        options = fields[sep + 3] if len(fields) > sep + 3 else ""
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]), options))
    return mounts


def _under(path: str, point: str) -> bool:
    """Whether ``path`` is ``point`` or lies below it (both normalised absolute paths)."""
    return point == "/" or path == point or path.startswith(point + "/")


def _mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    best: Mount | None = None
    for m in mounts:  # later lines are mounted over earlier ones: ">=" keeps the last
        if _under(path, m.mount_point) and (best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    return best


def _overlay_dirs(options: str) -> list[str]:
    """The lower and upper directories named in an overlay's options (``lowerdir=/a:/b``,
    ``upperdir=/c``; the kernel escapes commas and spaces in them as octal)."""
    dirs: list[str] = []
    for opt in options.split(","):
        key, _, value = opt.partition("=")
        if key in _OVERLAY_DIRS and value:
            dirs.extend(os.path.normpath(_unescape(d)) for d in value.split(":") if d.startswith("/"))
    return dirs


def _judge(m: Mount, mounts: list[Mount], depth: int) -> str | None:
    """None when mount ``m`` cannot stall, else why it can."""
    if m.fstype not in LOCAL_TYPES:
        return f"{m.fstype} at {m.mount_point} can stall"
    if m.fstype != "overlay" or depth > 4:
        return None
    for d in _overlay_dirs(m.options):
        under = _mount_of(d, mounts)
        if under is None or under is m:
            continue  # not visible in this mount namespace (a container's host paths)
        why = _judge(under, mounts, depth + 1)
        if why is not None:
            return f"overlay at {m.mount_point} over {d}: {why}"
    return None


def classify(path: str, mountinfo: str) -> MountKind:
    """Classify absolute, resolved ``path`` against mount table text ``mountinfo``."""
    if not path.startswith("/"):
        raise ValueError(f"path: expected an absolute path, given {path!r}")
    path = os.path.normpath(path)
    mounts = parse_mountinfo(mountinfo)
    m = _mount_of(path, mounts)
    if m is None:
        return MountKind("", "", False, f"no mount found for {path}: treated as able to stall")
    why = _judge(m, mounts, 0)
    if why is not None:
        return MountKind(m.fstype, m.mount_point, False, why)
    for below in mounts if path != "/" else ():
        if below.mount_point != path and _under(below.mount_point, path):
            why = _judge(below, mounts, 0)
            if why is not None:
                return MountKind(m.fstype, m.mount_point, False, f"{why} (below {path})")
    return MountKind(m.fstype, m.mount_point, True, f"{m.fstype} at {m.mount_point} is local")


def mount_kind(path: str, mountinfo_path: str = MOUNTINFO) -> MountKind:
    """Classify the directory ``path`` (resolved with ``realpath``; it need not exist yet) by
    this process's mount table; not local when the table cannot be read."""
    real = os.path.realpath(path)
    try:
        with open(mountinfo_path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        return MountKind(
            "", "", False, f"cannot read {mountinfo_path} ({e.strerror}): treated as able to stall"
        )
    return classify(real, text)
