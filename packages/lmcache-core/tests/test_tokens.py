import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmcache_core.tokens import TokenChunker, as_token_array, salt_root


def test_bounds_full_and_partial():
    c = TokenChunker(4)
    assert c.bounds(10) == [(0, 4), (4, 8), (8, 10)]
    assert TokenChunker(4, save_partial=False).bounds(10) == [(0, 4), (4, 8)]
    assert c.bounds(8) == [(0, 4), (4, 8)]
    assert c.bounds(0) == []


def test_hash_follows_documented_formula():
    tokens = [1, 2, 3, 70000, 5]
    got = TokenChunker(2).prefix_hashes(tokens, cache_salt="tenant")
    h = hashlib.sha256(b"lmcache-core/prefix/v1\0tenant").digest()
    expected = []
    for start in range(0, 5, 2):
        part = np.array(tokens[start : start + 2], dtype="<u4").tobytes()
        h = hashlib.sha256(h + part).digest()
        expected.append(h)
    assert [g[2] for g in got] == expected
    assert [(s, e) for s, e, _ in got] == [(0, 2), (2, 4), (4, 5)]


def test_prefix_property_and_salt():
    c = TokenChunker(3)
    a = c.prefix_hashes(list(range(9)))
    b = c.prefix_hashes([*range(6), 99, 7, 8])
    assert a[:2] == b[:2] and a[2] != b[2]
    changed_first = c.prefix_hashes([5, *range(1, 9)])
    assert all(
        x[2] != y[2] for x, y in zip(a, changed_first, strict=True)
    )  # a change early changes every later hash
    salted = c.prefix_hashes(list(range(9)), cache_salt="other")
    assert all(x[2] != y[2] for x, y in zip(a, salted, strict=True))
    assert salt_root(None) == salt_root("")


def test_input_types_agree():
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    c = TokenChunker(4)
    ref = c.prefix_hashes(ids)
    assert c.prefix_hashes(np.array(ids, dtype=np.int64)) == ref
    assert c.prefix_hashes(torch.tensor(ids)) == ref
    assert c.prefix_hashes(torch.tensor(ids, dtype=torch.int32)) == ref


def test_identical_across_processes_without_hashseed():
    code = (
        "from lmcache_core.tokens import TokenChunker;"
        "print(TokenChunker(4).prefix_hashes(list(range(13)), 's')[-1][2].hex())"
    )
    outs = set()
    for seed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.check_output([sys.executable, "-c", code], env=env, text=True).strip())
    assert len(outs) == 1
    assert outs.pop() == TokenChunker(4).prefix_hashes(list(range(13)), "s")[-1][2].hex()


@pytest.mark.parametrize(
    ("tokens", "exc", "fragment"),
    [
        ([[1, 2]], ValueError, "1-D"),
        ([1.5, 2.0], TypeError, "integer"),
        ([-1, 2], ValueError, "given -1"),
        ([2**32], ValueError, "given 4294967296"),
    ],
)
def test_bad_tokens(tokens, exc, fragment):
    with pytest.raises(exc, match="tokens") as e:
        as_token_array(tokens)
    assert fragment in str(e.value)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_chunk_size(size):
    with pytest.raises(ValueError, match="chunk_size"):
        TokenChunker(size)
