"""fs_kind: which file system holds a directory and whether it can stall. Network and FUSE mounts
cannot be made here, so their classification is checked on mount tables written out below; this
machine's own directories and a tmpfs mounted as root are checked against ``findmnt``."""

import shutil
import subprocess
import threading

import pytest

from lmcache_core.storage import open_adapter
from lmcache_core.storage.fs_kind import LOCAL_TYPES, Mount, classify, mount_kind, parse_mountinfo

# A host with a local root, network and FUSE mounts, an NFS share mounted on a shard directory
# of a tmpfs cache, two overlays (over a local disk, over NFS), a mount point with a space, two
# mounts stacked on one point, a type nobody listed, and a line that does not parse.
MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 27 0:40 / /data rw,relatime shared:5 - nfs4 10.0.0.5:/export rw,vers=4.2,hard
41 27 0:41 / /data2 rw - xfs /dev/vdb rw
42 27 0:42 / /mnt/sshfs rw,nosuid master:3 - fuse.sshfs user@host:/ rw,user_id=0
43 27 0:43 / /mnt/smb rw - cifs //srv/share rw
44 27 0:44 / /mnt/ceph rw - ceph 10.0.0.6:6789:/ rw
45 27 0:45 / /mnt/lustre rw - lustre 10.0.0.7@tcp:/fs rw
46 27 0:46 / /mnt/9p rw - 9p hostshare rw,trans=virtio
47 27 0:47 / /scratch rw - tmpfs tmpfs rw,size=1g
48 47 0:48 / /scratch/kv/3f rw - nfs 10.0.0.5:/x rw
49 27 0:49 / /var/lib/c1/merged rw - overlay overlay rw,lowerdir=/data2/l1:/data2/l2,upperdir=/data2/u,workdir=/data2/w
50 27 0:50 / /var/lib/c2/merged rw - overlay overlay rw,lowerdir=/data2/l1:/data/lower,upperdir=/data2/u,workdir=/data2/w
51 27 0:51 / /mnt/my\040disk rw - ext4 /dev/vdc rw
52 27 0:52 / /stack rw - ext4 /dev/vdd rw
53 27 0:53 / /stack rw - nfs4 10.0.0.5:/s rw
54 27 0:54 / /mnt/odd rw - zonefs /dev/vde rw
this line is not a mount
"""


@pytest.mark.parametrize(
    "path, fstype, point, local",
    [
        ("/work/kv", "ext4", "/", True),
        ("/data", "nfs4", "/data", False),
        ("/data/kv", "nfs4", "/data", False),
        ("/data2/kv", "xfs", "/data2", True),  # /data is not a prefix of /data2
        ("/mnt/sshfs/kv", "fuse.sshfs", "/mnt/sshfs", False),
        ("/mnt/smb/kv", "cifs", "/mnt/smb", False),
        ("/mnt/ceph/kv", "ceph", "/mnt/ceph", False),
        ("/mnt/lustre/kv", "lustre", "/mnt/lustre", False),
        ("/mnt/9p/kv", "9p", "/mnt/9p", False),
        ("/scratch/kv", "tmpfs", "/scratch", False),  # its shard 3f is an NFS mount
        ("/scratch/other", "tmpfs", "/scratch", True),
        ("/var/lib/c1/merged/kv", "overlay", "/var/lib/c1/merged", True),
        ("/var/lib/c2/merged/kv", "overlay", "/var/lib/c2/merged", False),
        ("/mnt/my disk/kv", "ext4", "/mnt/my disk", True),
        ("/stack/kv", "nfs4", "/stack", False),  # the mount on top is the one seen
        ("/mnt/odd/kv", "zonefs", "/mnt/odd", False),  # not known to be local: the safe side
        ("/data2/kv/../../data/kv", "nfs4", "/data", False),
    ],
)
def test_classify_by_mount_table(path, fstype, point, local):
    kind = classify(path, MOUNTINFO)
    assert (kind.fstype, kind.mount_point, kind.local) == (fstype, point, local), kind


def test_classify_says_why():
    assert classify("/data/kv", MOUNTINFO).reason == "nfs4 at /data can stall"
    assert classify("/scratch/kv", MOUNTINFO).reason == "nfs at /scratch/kv/3f can stall (below /scratch/kv)"
    assert classify("/var/lib/c2/merged", MOUNTINFO).reason == (
        "overlay at /var/lib/c2/merged over /data/lower: nfs4 at /data can stall"
    )
    assert classify("/data2/kv", MOUNTINFO).reason == "xfs at /data2 is local"


def test_a_containers_overlay_root_with_hidden_layers_is_local():
    """In a container the overlay's layers are host paths this mount namespace cannot see."""
    text = (
        "500 400 0:60 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/AB:"
        "/var/lib/docker/overlay2/l/CD,upperdir=/var/lib/docker/overlay2/x/diff,workdir=/var/lib/docker/w\n"
        "501 500 0:61 / /proc rw - proc proc rw\n"
    )
    kind = classify("/cache/kv", text)
    assert (kind.fstype, kind.mount_point, kind.local) == ("overlay", "/", True)


def test_no_mount_table_is_not_local():
    kind = classify("/work/kv", "")
    assert (kind.fstype, kind.local) == ("", False) and "no mount found" in kind.reason
    kind = mount_kind("/work/kv", mountinfo_path="/nonexistent/mountinfo")
    assert not kind.local and "cannot read /nonexistent/mountinfo" in kind.reason


def test_parse_mountinfo_unescapes_and_skips_bad_lines():
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 17
    assert mounts[1] == Mount("/", "ext4", "/dev/vda", "rw,discard")
    assert mounts[4] == Mount("/mnt/sshfs", "fuse.sshfs", "user@host:/", "rw,user_id=0")
    assert mounts[13] == Mount("/mnt/my disk", "ext4", "/dev/vdc", "rw")


def test_a_relative_path_is_refused():
    with pytest.raises(ValueError, match=r"path: expected an absolute path, given 'kv'"):
        classify("kv", MOUNTINFO)


def findmnt(path) -> tuple[str, str]:
    """``(fstype, mount point)`` of ``path`` as util-linux's findmnt sees it (the reference)."""
    if shutil.which("findmnt") is None:
        pytest.skip("findmnt (util-linux) not installed: apt-get install -y util-linux")
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,TARGET", "-T", str(path)], capture_output=True,
                         text=True, check=True).stdout.split(None, 1)  # fmt: skip
    return out[0], out[1].strip()


def test_this_machines_temporary_directory(tmp_path):
    fstype, point = findmnt(tmp_path)
    kind = mount_kind(str(tmp_path / "not" / "made" / "yet"))
    assert (kind.fstype, kind.mount_point) == (fstype, point)
    assert kind.local == (fstype in LOCAL_TYPES)


def test_a_tmpfs_mounted_here_is_local_and_its_lookups_run_inline(tmp_path, mounts):
    root = mounts.tmpfs(tmp_path / "t")
    assert findmnt(root) == ("tmpfs", str(root))
    kind = mount_kind(str(root / "kv"))
    assert (kind.fstype, kind.mount_point, kind.local) == ("tmpfs", str(root), True)
    with open_adapter(f"fs://{root}/kv") as a:
        assert a.inline_lookup and a.fs_kind == kind
        assert a.metrics.snapshot().gauges["inline_lookups"] == 1.0
        threads = record_lookup_threads(a)
        assert a.lookup(["k"]) == [False]
        assert threads == [threading.current_thread().name]


def test_a_mount_of_an_unlisted_type_below_the_root_keeps_the_deadline(tmp_path, mounts):
    """A file system not known to be local (mqueue stands in for NFS or FUSE, which cannot be
    mounted here) on a directory inside the root: lookups stay on the I/O threads."""
    root = tmp_path / "kv"
    (root / "zz").mkdir(parents=True)
    mounts._mount("-t", "mqueue", "none", str(root / "zz"))
    mounts.points.append(root / "zz")
    with open_adapter(f"fs://{root}") as a:
        assert not a.inline_lookup and a.fs_kind is not None
        assert a.fs_kind.reason == f"mqueue at {root}/zz can stall (below {root})"
        assert a.metrics.snapshot().gauges["inline_lookups"] == 0.0
        threads = record_lookup_threads(a)
        assert a.lookup(["k"]) == [False]
        assert len(threads) == 1 and threads[0].startswith("l2-io-fs-")


def record_lookup_threads(a) -> list[str]:
    """Make ``a`` note the name of the thread each of its ``_lookup`` calls runs on."""
    names: list[str] = []
    inner = a._lookup

    def traced(keys):
        names.append(threading.current_thread().name)
        return inner(keys)

    a._lookup = traced
    return names
