"""A loaded backend: its plugin registered alone in a pluggy manager, and the calls the core makes.

:class:`Backend` is the one door to a backend's kernels: it validates every kernel call's
arguments once (:func:`lmcache_core.validation.check_transfer`), then calls the backend's own hook
when the backend implements it and its :class:`Capabilities` cover the layout and dtype, otherwise
the reference backend's. Hooks are called directly (each has one implementation); the kernel
hooks do not validate again.

Arrays (hook API 1.2): the KV arrays' family (torch, numpy, JAX: :mod:`lmcache_core.arrays`)
routes too. The reference moves torch tensors only, so numpy or JAX KV go to a backend whose
Capabilities declare that family, or fail with a TypeError naming ``kv_caches``. For such KV the
hooks receive host chunks as numpy arrays (zero-copy views of the core's torch L1 buffers) and
numpy int64 slot mappings. A **functional** backend (``Capabilities.functional``) returns the
updated KV arrays from its scatter; :meth:`Backend.scatter` checks them and returns them, and
returns ``kv_caches`` itself for an in-place backend, so callers always continue with its result.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from lmcache_core import hookspecs
from lmcache_core.arrays import TORCH, array_family, array_info, numpy_view, type_text
from lmcache_core.layout import KVLayout
from lmcache_core.plugin_api import Capabilities, check_api_version, check_capabilities
from lmcache_core.validation import check_transfer

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_KERNEL_HOOKS = ("lmcache_gather", "lmcache_scatter")
#: Every hook of :mod:`lmcache_core.hookspecs`.
_HOOKS = tuple(name for name in vars(hookspecs) if name.startswith("lmcache_"))
_NOTHING = Capabilities(layouts=frozenset(), dtypes=frozenset(), status="no kernels")


def import_plugin(path: str) -> object:
    """Import ``"pkg.module"`` or ``"pkg.module:attribute"`` and return the plugin object."""
    module_name, _, attr = path.partition(":")
    module: ModuleType = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


class Backend:
    """A backend plugin ready to use. ``reference`` is the fallback (None for the reference)."""

    def __init__(self, name: str, plugin: object, reference: Backend | None = None) -> None:
        self.name = name
        self.reference = reference
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._pm.register(plugin, name=name)
        self._pm.check_pending()  # a hookimpl with no matching spec is a typo: fail at load
        # One plugin per manager, so each hook has at most one implementation: keep its function
        # and call it directly (pluggy's dispatch costs ~30 us a call, and there is nothing to
        # combine). Pluggy is here for registration's checks of names and arguments.
        self._impls: dict[str, Callable[..., Any]] = {}
        for hook in _HOOKS:
            impls = getattr(self._pm.hook, hook).get_hookimpls()
            if impls:
                self._impls[hook] = impls[0].function
        if "lmcache_api_version" not in self._impls:
            raise pluggy.PluginValidationError(
                plugin, f"backend {name!r} does not implement the required hook lmcache_api_version"
            )
        built_against = self._impls["lmcache_api_version"]()
        check_api_version(name, built_against)
        caps = self._impls["lmcache_capabilities"]() if "lmcache_capabilities" in self._impls else None
        self.capabilities: Capabilities = caps if caps is not None else _NOTHING
        check_capabilities(name, built_against, self.capabilities)

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.capabilities.status!r})"

    def _implements(self, hook: str) -> bool:
        return hook in self._impls

    @property
    def functional(self) -> bool:
        """True when this backend's scatter returns new KV arrays instead of writing in place."""
        return self.capabilities.functional

    def handles(self, layout: KVLayout, array_type: str = TORCH) -> bool:
        """True when this backend's own kernels (not the reference's) move ``layout`` held in
        arrays of family ``array_type``."""
        return all(h in self._impls for h in _KERNEL_HOOKS) and all(
            self.capabilities.covers(layout.kind, k.dtype, array_type) for k in layout.kinds
        )

    def _kernel_owner(self, layout: KVLayout, array_type: str = TORCH) -> Backend:
        if self.handles(layout, array_type):
            return self
        if array_type == TORCH:
            return self if self.reference is None else self.reference
        caps = self.capabilities
        raise TypeError(
            f"kv_caches: backend {self.name!r} has no kernels for {array_type} arrays of layout "
            f"{layout.kind} in {layout.dtype} (its Capabilities: arrays {sorted(caps.arrays)}, layouts "
            f"{sorted(caps.layouts)}, dtypes {sorted(caps.dtypes)}), and the reference backend moves "
            f"torch tensors only; use a backend that declares {array_type} arrays"
        )

    def kernel_name(self, layout: KVLayout, array_type: str = TORCH) -> str:
        """Name of the backend whose kernels will move ``layout`` in ``array_type`` arrays."""
        return self._kernel_owner(layout, array_type).name

    def gather(
        self,
        layout: KVLayout,
        kv_caches: Sequence[Any],
        slot_mapping: Any,
        out: Any,
        skip_prefix: int = 0,
        stream: int = 0,
    ) -> None:
        """Copy chunk tokens' KV from paged ``kv_caches`` into ``out``.

        ``slot_mapping``: int64 ``[num_tokens]``, -1 skips a token; ``out``: contiguous
        ``[num_kv, num_layers, num_tokens, hidden]``. Rows before ``skip_prefix`` and rows of -1
        slots are left as they were. May be asynchronous on ``stream``. For numpy/JAX KV,
        ``slot_mapping`` is a numpy array and ``out`` a numpy array or host torch tensor.
        """
        family = check_transfer(layout, kv_caches, slot_mapping, "out", out, skip_prefix)
        owner = self._kernel_owner(layout, family)
        if family != TORCH:
            out = numpy_view(out, kv_caches[0].dtype)
        owner._impls["lmcache_gather"](
            layout=layout,
            kv_caches=kv_caches,
            slot_mapping=slot_mapping,
            out=out,
            skip_prefix=skip_prefix,
            stream=stream,
        )

    def scatter(
        self,
        layout: KVLayout,
        kv_caches: Sequence[Any],
        slot_mapping: Any,
        src: Any,
        skip_prefix: int = 0,
        stream: int = 0,
    ) -> list[Any]:
        """Copy chunk tokens' KV from ``src`` into paged ``kv_caches``: the inverse of gather.

        Returns the KV arrays that now hold the chunk: ``kv_caches`` itself (as a list) for an
        in-place backend, the new arrays a functional backend returned (checked: one per array
        of ``kv_caches``, same family, shape, strides, dtype and device). Continue with them.
        """
        family = check_transfer(layout, kv_caches, slot_mapping, "src", src, skip_prefix)
        owner = self._kernel_owner(layout, family)
        if family != TORCH:
            src = numpy_view(src, kv_caches[0].dtype)
        # read before the call: a functional backend may donate the inputs (deleted JAX arrays)
        metas = (
            [array_info(t, f"kv_caches[{i}]") for i, t in enumerate(kv_caches)] if owner.functional else []
        )
        if not owner.functional:
            for i, t in enumerate(kv_caches):
                if family != TORCH and not array_info(t, f"kv_caches[{i}]").writable:
                    raise ValueError(
                        f"kv_caches[{i}]: expected a writable array (backend {owner.name!r} writes the KV "
                        f"in place), given a read-only {type_text(t)}"
                    )
        result = owner._impls["lmcache_scatter"](
            layout=layout,
            kv_caches=kv_caches,
            slot_mapping=slot_mapping,
            src=src,
            skip_prefix=skip_prefix,
            stream=stream,
        )
        if not owner.functional:
            return list(kv_caches)
        return _check_functional_result(owner.name, kv_caches, result, metas)

    def _device_call(self, hook: str, **kwargs: Any) -> Any:
        owner = self if self._implements(hook) or self.reference is None else self.reference
        return owner._impls[hook](**kwargs)

    def alloc_host(self, nbytes: int, pinned: bool = True) -> torch.Tensor:
        """uint8 ``[nbytes]`` host buffer, page-locked when ``pinned`` and the device supports it."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes: expected a non-negative int, given {nbytes!r}")
        return self._device_call("lmcache_alloc_host", nbytes=nbytes, pinned=pinned)

    def new_stream(self, device: Any = None) -> int:
        """Opaque integer handle of a new stream (0: the current/default stream)."""
        return self._device_call("lmcache_new_stream", device=device)

    def record_event(self, stream: int = 0) -> Any:
        """Record an event on ``stream``; returns an opaque handle for :meth:`synchronize`."""
        return self._device_call("lmcache_record_event", stream=stream)

    def synchronize(self, handle: Any = None) -> None:
        """Wait for ``handle`` (an event or stream); None waits for the whole device."""
        self._device_call("lmcache_synchronize", handle=handle)

    # ---- ordering against the engine's compute stream (hook API 1.1) ---------------------------
    # A 1.0 plugin lacks these hooks; its events and streams are its own, so the reference's
    # hooks cannot stand in: the core falls back to host waits, which are slower but ordered.

    def _own(self, hook: str) -> Callable[..., Any] | None:
        return self._impls.get(hook)

    def current_stream(self, device: Any) -> int:
        """Handle of the stream the engine computes on for ``device`` (0: the plugin's default)."""
        impl = self._own("lmcache_current_stream")
        return int(impl(device=device)) if impl is not None else 0

    def stream_wait_event(self, stream: int, event: Any) -> None:
        """``stream`` waits on the device for ``event``; a host wait for a plugin without the hook."""
        impl = self._own("lmcache_stream_wait_event")
        if impl is not None:
            impl(stream=stream, event=event)
        else:
            self.synchronize(event)

    def query_event(self, event: Any) -> bool:
        """True when ``event`` completed (never blocks; a host wait for a plugin without the hook)."""
        impl = self._own("lmcache_query_event")
        if impl is not None:
            return bool(impl(event=event))
        self.synchronize(event)
        return True

    def destroy_stream(self, stream: int) -> None:
        """Free a stream from :meth:`new_stream` and the backend's buffers for it (after its work)."""
        impl = self._own("lmcache_destroy_stream")
        if stream and impl is not None:
            impl(stream=stream)

    def order_after_compute(self, stream: int, device: Any) -> Any:
        """Make ``stream`` wait, on the device, for every kernel enqueued so far on ``device``'s
        compute stream (the forward that writes the KV a gather reads). Returns the event."""
        event = self.record_event(self.current_stream(device))
        self.stream_wait_event(stream, event)
        return event

    def order_compute_after(self, stream: int, device: Any) -> Any:
        """Make ``device``'s compute stream wait for the work enqueued so far on ``stream`` (a
        scatter the next forward reads). Returns the event recorded on ``stream``."""
        event = self.record_event(stream)
        self.stream_wait_event(self.current_stream(device), event)
        return event


def _check_functional_result(
    name: str, kv_caches: Sequence[Any], result: object, metas: Sequence[Any] | None = None
) -> list[Any]:
    """The arrays a functional backend's scatter returned, checked against the ones it was given
    (``metas``: their :class:`~lmcache_core.arrays.ArrayInfo`, read before the call)."""
    what = f"backend {name!r}: lmcache_scatter (functional) returned"
    if not isinstance(result, (list, tuple)) or len(result) != len(kv_caches):
        got = f"{len(result)} arrays" if isinstance(result, (list, tuple)) else type(result).__name__
        raise RuntimeError(
            f"{what} {got}, expected a list of {len(kv_caches)} KV arrays (one per kv_caches entry)"
        )
    for i, (new, old) in enumerate(zip(result, kv_caches, strict=True)):
        if array_family(new) != array_family(old):
            raise RuntimeError(
                f"{what} {type_text(new)} at [{i}], expected {type_text(old)} like kv_caches[{i}]"
            )
        a = array_info(new, f"result[{i}]")
        b = metas[i] if metas else array_info(old, f"kv_caches[{i}]")
        got_meta = (a.shape, a.strides, a.dtype, a.device)
        want_meta = (b.shape, b.strides, b.dtype, b.device)
        if got_meta != want_meta:
            raise RuntimeError(
                f"{what} an array at [{i}] with (shape, strides, dtype, device) {got_meta}, expected "
                f"{want_meta} (those of kv_caches[{i}]: the layout must still describe it)"
            )
    return list(result)


@cache
def reference_backend() -> Backend:
    """The pure-PyTorch reference backend (always loadable, even without entry-point metadata)."""
    return Backend("reference", import_plugin("lmcache_core.backends.reference"))
