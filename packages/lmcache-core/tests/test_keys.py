import pytest

from lmcache_core.keys import KeyScope, salt_tag


def test_key_text_carries_every_field():
    scope = KeyScope("llama-8b", "kv2.L32.h1024.bfloat16", world_size=4, rank=2, salt=salt_tag("acme"))
    text = str(scope.key(bytes(range(32))))
    model, spec, tp, salt, digest = text.split("|")
    assert (model, spec, tp) == ("llama-8b", "kv2.L32.h1024.bfloat16", "tp4.2")
    assert salt == salt_tag("acme") and len(salt) == 16 and "acme" not in text
    assert digest == bytes(range(32)).hex()


def test_ranks_and_salts_never_share_keys():
    h = b"\x01" * 32
    keys = {
        KeyScope("m", "t", 2, 0).key(h),
        KeyScope("m", "t", 2, 1).key(h),
        KeyScope("m", "t", 2, 0, salt_tag("a")).key(h),
        KeyScope("m", "t", 2, 0, salt_tag("b")).key(h),
        KeyScope("m2", "t", 2, 0).key(h),
    }
    assert len({str(k) for k in keys}) == 5
    assert salt_tag(None) == salt_tag("") == "-"


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"model_id": "", "spec_tag": "t"}, "model_id"),
        ({"model_id": "a|b", "spec_tag": "t"}, "model_id"),
        ({"model_id": "m", "spec_tag": "t", "world_size": 2, "rank": 2}, "rank"),
    ],
)
def test_bad_scope(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        KeyScope(**kwargs)
