"""Token rows of one layer's KV array, read and written as jnp values (traced inside jit).

The layouts JAX engines use (:mod:`lmcache_core.layout_registry`), per layer (one array each):

* ``tpu_inference``: ``[num_pages, page_size, G, p, Dp]`` (``p = 32 / dtype bits``,
  ``Dp = align(D, 128)``); the combined head axis ``G * p`` holds K of head ``h`` at ``2h`` and
  its V at ``2h + 1``; head_size 64 (``hd64``): ``[num_pages, page_size, G, p, 128]``, head ``h``'s
  row is ``[K (64) | V (64)]``.
* ``tpu_inference_mla``: ``[num_pages, ceil(page_size / p), p, lanes]`` (token ``t`` at
  ``[t // p, t % p]``), or ``transposed`` ``[num_pages, lanes, page_size]``; one latent of
  ``width <= lanes`` channels.

A *raw row* is everything one token has in one layer: ``[G * p, Dp]`` (tpu_inference) or
``[lanes]`` (MLA), padding included. :func:`split` takes the real channels of each plane kind
out of raw rows (K and V de-interleaved) as ``[n, hidden_k]``; :func:`merge` writes them back into
raw rows, leaving padding as it was. Shapes use named axes; ``n`` is the number of rows.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from lmcache_core.layout import KVLayout

#: Registry kinds these functions move.
LAYOUTS = ("tpu_inference", "tpu_inference_mla")


def _extra(layout: KVLayout, name: str) -> str | None:
    return dict(layout.extra).get(name)


def transposed(layout: KVLayout) -> bool:
    """True for tpu_inference_mla's ``transposed`` ([pages, lanes, page_size]) variant."""
    return layout.kind == "tpu_inference_mla" and _extra(layout, "variant") == "transposed"


def read_raw(layout: KVLayout, arr: Any, blk: Any, pos: Any) -> Any:
    """Raw rows of tokens ``(blk[i], pos[i])`` (int32 ``[n]`` each): ``[n, G*p, Dp]`` or
    ``[n, lanes]``. Out-of-range ``blk`` (padding rows) reads a clamped row."""
    n = blk.shape[0]
    if layout.kind == "tpu_inference":
        rows = arr[blk, pos]  # [n, G, p, Dp]
        return rows.reshape(n, rows.shape[1] * rows.shape[2], rows.shape[3])
    if transposed(layout):
        return arr[blk, :, pos]  # [n, lanes]
    p = arr.shape[2]
    return arr[blk, pos // p, pos % p]  # [n, lanes]


def write_raw(layout: KVLayout, arr: Any, blk: Any, pos: Any, raw: Any) -> Any:
    """``arr`` with raw rows ``raw`` written at ``(blk[i], pos[i])``; rows whose ``blk`` is out
    of range (``num_pages``: padding) are dropped."""
    if layout.kind == "tpu_inference":
        n = blk.shape[0]
        return arr.at[blk, pos].set(raw.reshape(n, *arr.shape[2:]), mode="drop")
    if transposed(layout):
        return arr.at[blk, :, pos].set(raw, mode="drop")
    p = arr.shape[2]
    return arr.at[blk, pos // p, pos % p].set(raw, mode="drop")


def split(layout: KVLayout, raw: Any) -> list[Any]:
    """Per plane kind, the real channels of raw rows: ``[n, hidden_k]`` (K and V apart)."""
    n = raw.shape[0]
    if layout.kind != "tpu_inference":
        width = layout.kinds[0].width
        return [raw[:, :width]]
    h, d = layout.kinds[0].heads, layout.kinds[0].width
    if _extra(layout, "kernel") == "hd64":  # head h's row: [K (64) | V (64)]
        k, v = raw[:, :h, :d], raw[:, :h, d : 2 * d]
    else:  # combined head 2h: K of head h, 2h + 1: its V
        k, v = raw[:, 0 : 2 * h : 2, :d], raw[:, 1 : 2 * h : 2, :d]
    return [k.reshape(n, h * d), v.reshape(n, h * d)]


def merge(layout: KVLayout, raw: Any, parts: list[Any]) -> Any:
    """Raw rows with each kind's real channels replaced by ``parts[k]`` (``[n, hidden_k]``)."""
    n = raw.shape[0]
    if layout.kind != "tpu_inference":
        width = layout.kinds[0].width
        return raw.at[:, :width].set(parts[0])
    h, d = layout.kinds[0].heads, layout.kinds[0].width
    k, v = (x.reshape(n, h, d) for x in parts)
    if _extra(layout, "kernel") == "hd64":
        return raw.at[:, :h, :d].set(k).at[:, :h, d : 2 * d].set(v)
    return raw.at[:, 0 : 2 * h : 2, :d].set(k).at[:, 1 : 2 * h : 2, :d].set(v)


def stack_chunk(parts_per_layer: list[list[Any]]) -> Any:
    """``[num_kv, num_layers, n, hidden]`` from ``parts_per_layer[layer][kind]``."""
    num_kv = len(parts_per_layer[0])
    return jnp.stack([jnp.stack([layer[k] for layer in parts_per_layer]) for k in range(num_kv)])
