import numpy as np
import pytest
import torch

from lmcache_core.serde import parse_chain
from lmcache_core.serde.codec import CodecError
from lmcache_core.storage.object_format import Serde

from .conftest import DTYPES, KEY, kv, values

SHAPE = (2, 3, 16, 64)
LOSSLESS = ["zstd", "lz4", "zstd:level=5:shuffle=0:blocksize=0", "aesgcm", "zstd,aesgcm", "lz4,aesgcm"]
LOSSY = ["fp8", "fp8:format=e5m2:head_size=32", "fp8:scaling=none", "int8", "int8:group=7", "fp8,zstd",
         "int8:group=32,lz4", "fp8,zstd,aesgcm", "int8,lz4,aesgcm"]  # fmt: skip


def chain_of(spec, key_file):
    return parse_chain(spec.replace("aesgcm", f"aesgcm:key_file={key_file}"))


def round_trip(chain, raw, dtype, key=KEY, shape=SHAPE):
    enc, serde = chain.encode(raw, key, "fmt", dtype, shape)
    serde = Serde.from_bytes(serde.to_bytes())  # as a reader gets it from a header
    out = np.zeros(raw.nbytes, np.uint8)
    chain.decode(serde, enc.copy(), key, "fmt", dtype, shape, out)
    return enc, serde, out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", LOSSLESS)
def test_lossless_chains_round_trip_exactly(spec, dtype, key_file):
    raw = kv(dtype)
    chain = chain_of(spec, key_file)
    enc, serde, out = round_trip(chain, raw, dtype)
    assert np.array_equal(out, raw)
    assert serde.names == tuple(c.name for c in chain.codecs) and serde.plain_len == raw.nbytes
    if "aesgcm" in spec:
        assert raw.tobytes()[:64] not in enc.tobytes()  # ciphertext, not plaintext


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", LOSSY)
def test_lossy_chains_round_trip_within_their_error(spec, dtype, key_file):
    raw = kv(dtype)
    x = values(raw, dtype, SHAPE)
    enc, _, out = round_trip(chain_of(spec, key_file), raw, dtype)
    y = values(out, dtype, SHAPE)
    assert torch.isfinite(y).all()
    err = (y - x).abs()
    if spec.startswith("int8"):  # half a step of the group's absmax / 127 (+ the dtype's rounding)
        assert err.max() <= 40.0 / 127 / 2 * 1.02 + 0.2
    assert enc.nbytes < raw.nbytes
    # relative error of the large values: e4m3 has 3 mantissa bits, e5m2 2
    big = x.abs() > 1
    rel = (err[big] / x.abs()[big]).max()
    assert (
        rel <= (0.0625 if "e4m3" in spec or (spec.startswith("fp8") and "e5m2" not in spec) else 0.13) + 0.01
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_scales_beat_a_plain_cast_on_small_heads(dtype):
    raw = kv(dtype)
    x = values(raw, dtype, SHAPE)
    errs = {}
    for spec in ("fp8:head_size=8", "fp8:scaling=none"):
        _, _, out = round_trip(parse_chain(spec), raw, dtype)
        errs[spec] = (values(out, dtype, SHAPE) - x).abs()[..., :8].mean().item()  # the 0.01-scale channels
    assert errs["fp8:head_size=8"] < errs["fp8:scaling=none"] * 0.8


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp8_power_of_two_scales_round_normal_values_as_a_plain_cast_and_fix_the_range(dtype):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(SHAPE, generator=g) < 0.5, -1.0, 1.0)

    def errors(lo: float, hi: float) -> dict[str, torch.Tensor]:
        x = (torch.exp2(torch.empty(SHAPE).uniform_(lo, hi, generator=g)) * signs).to(getattr(torch, dtype))
        raw = x.contiguous().view(torch.uint8).numpy().reshape(-1)
        out = {}
        for spec in ("fp8", "fp8:scaling=none"):
            _, _, dec = round_trip(parse_chain(spec), raw, dtype)
            out[spec] = (values(dec, dtype, SHAPE).float() - x.float()).abs()
        return out

    # magnitudes 2**-5 .. 2**8: every head's max is near 2**8, so the scale is 1 and nothing changes
    inside = errors(-5, 8)
    assert torch.equal(inside["fp8"], inside["fp8:scaling=none"])
    # 2**-12 .. 2**10: a plain cast saturates the largest values at 448; the scales bring them in range
    wide = errors(-12, 10)
    assert wide["fp8"].max().item() < wide["fp8:scaling=none"].max().item() / 10
    assert wide["fp8"].mean().item() < wide["fp8:scaling=none"].mean().item()


def test_tensor_codecs_skip_chunks_they_do_not_apply_to():
    raw = kv("float16")
    chain = parse_chain("fp8,zstd")
    _, serde = chain.encode(raw, KEY, "L3.k64f16.v32f16", "uint8", (raw.nbytes,))
    assert serde.names == ("zstd",)  # mixed sections: bytes only
    inf = kv("float32").view(np.float32).copy()
    inf[5] = np.inf
    assert chain.encode(inf.view(np.uint8), KEY, "fmt", "float32", SHAPE)[1].names == ("zstd",)
    assert parse_chain("int8").encode(raw, KEY, "fmt", "uint8", (raw.nbytes,)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zstd,fp8", "must come before"),
        ("aesgcm:key_file=K,zstd", "must come before"),
        ("zstd,zstd", "given twice"),
        ("brotli", "unknown codec 'brotli'; known: aesgcm, fp8, int8, lz4, zstd"),
        ("zstd:level", "expected option=value"),
        ("zstd:level=0", "expected an integer in 1..9"),
        ("zstd:speed=1", "unknown option(s) speed; valid: blocksize, level, shuffle, threads"),
        ("fp8:format=e3m4", "expected one of ['e4m3', 'e5m2']"),
        ("aesgcm", "key_file is required"),
        (",zstd", "expected codec names"),
    ],
)
def test_bad_chains_name_what_is_wrong(text, message, key_file):
    with pytest.raises(ValueError, match=None) as e:
        parse_chain(text.replace("key_file=K", f"key_file={key_file}"))
    assert message in str(e.value)


def test_empty_chain():
    assert not parse_chain("") and not parse_chain("none")
    assert parse_chain("").encode(b"abc", KEY, "f", "uint8", (3,)) is None


def test_a_reader_lacking_a_codec_says_which():
    serde = Serde(8, (("zstd", (("n", "8"),)), ("rot13", (("n", "8"),))))
    with pytest.raises(CodecError) as e:
        parse_chain("").check(serde)
    assert e.value.reason == "missing_codec" and "rot13" in str(e.value) and not e.value.removable


def test_a_damaged_encoding_is_a_codec_error(key_file):
    raw = kv("bfloat16")
    for spec in ("zstd", "lz4", "fp8", "int8", "aesgcm"):
        chain = chain_of(spec, key_file)
        enc, serde = chain.encode(raw, KEY, "fmt", "bfloat16", SHAPE)
        out = np.zeros(raw.nbytes, np.uint8)
        with pytest.raises(CodecError) as e:
            chain.decode(serde, enc[:-3], KEY, "fmt", "bfloat16", SHAPE, out)
        assert e.value.reason in ("bad_encoding", "aesgcm_auth_failed"), spec
