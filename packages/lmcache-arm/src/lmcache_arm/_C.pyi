"""Type stubs of the compiled extension ``lmcache_arm._C`` (csrc/binding.cpp)."""

from collections.abc import Sequence

def gather(
    tensor_address: Sequence[int],
    tensor_nbytes: Sequence[int],
    plane_tensor: Sequence[int],
    plane_offset: Sequence[int],
    dims: tuple[int, int, int, int],
    kinds: Sequence[Sequence[int]],
    slot_mapping: int,
    num_tokens: int,
    chunk: int,
    chunk_nbytes: int,
    skip_prefix: int,
    num_threads: int,
    stream: int = 0,
) -> None: ...
def scatter(
    tensor_address: Sequence[int],
    tensor_nbytes: Sequence[int],
    plane_tensor: Sequence[int],
    plane_offset: Sequence[int],
    dims: tuple[int, int, int, int],
    kinds: Sequence[Sequence[int]],
    slot_mapping: int,
    num_tokens: int,
    chunk: int,
    chunk_nbytes: int,
    skip_prefix: int,
    num_threads: int,
    stream: int = 0,
) -> None: ...
def isa() -> str: ...
def max_threads() -> int: ...
def get_tuning() -> dict[str, int | bool]: ...
def set_tuning(
    memcpy_min_bytes: int,
    max_span_bytes: int,
    coalesce: bool,
    prefetch_bytes: int = 0,
    tokens_outer: bool = True,
    prefetch_distance: int = 1,
    min_bytes_per_thread: int = 65536,
) -> None: ...
def reset_tuning() -> None: ...
