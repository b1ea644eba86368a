"""Phases for an un-annotated PyTorch loop: forward, backward, optimizer.step, dataloader.next.

Installed by the instrumentor. memspan never imports torch for this: if torch is already
imported the hooks go in at once, otherwise a one-shot import hook waits for ``import torch``
to finish and installs them then (``opentelemetry-instrument`` loads memspan before the
user's script imports anything).

Invariants:

- ``forward`` wraps only the outermost ``nn.Module`` call (submodule calls inside it are not
  phases), and ``backward`` only the outermost of ``Tensor.backward``/``torch.autograd.backward``
  (the first calls the second): a per-context depth counter decides.
- Every patch is recorded with the original it replaced; :meth:`TorchAutoPhases.uninstall`
  puts every original back, and wrappers that are still referenced somewhere fall through to
  the original once uninstalled.
- Exceptions (an OOM in forward, say) propagate unchanged through the wrappers; the phase
  records them like any other phase.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memspan.tracker import Tracker

FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER_STEP = "optimizer.step"
DATALOADER_NEXT = "dataloader.next"

_forward_depth: contextvars.ContextVar[int] = contextvars.ContextVar("memspan_forward", default=0)
_backward_depth: contextvars.ContextVar[int] = contextvars.ContextVar("memspan_backward", default=0)
_MARK = "__memspan_auto_phase__"


class TorchAutoPhases:
    """Patches torch (now or when it is imported) so its steps open phases."""

    def __init__(self, tracker_provider: Callable[[], Tracker]) -> None:
        self._tracker = tracker_provider
        self._patches: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()
        self._finder: _TorchImportHook | None = None
        self.active = False

    def install(self) -> None:
        with self._lock:
            if self.active:
                return
            self.active = True
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "nn"):
            self._patch(torch)
        else:
            self._finder = _TorchImportHook(self._patch_if_active)
            sys.meta_path.insert(0, self._finder)

    def uninstall(self) -> None:
        with self._lock:
            self.active = False
            if self._finder is not None and self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
            self._finder = None
            for owner, attribute, original in reversed(self._patches):
                setattr(owner, attribute, original)
            self._patches.clear()

    @property
    def patched(self) -> list[str]:
        return [f"{getattr(o, '__name__', o)}.{a}" for o, a, _ in self._patches]

    def _patch_if_active(self, torch: ModuleType) -> None:
        if self.active:
            self._patch(torch)

    def _patch(self, torch: ModuleType) -> None:
        with self._lock:
            if self._patches:
                return
            module_cls = torch.nn.Module
            self._replace(module_cls, "__call__", self._nested_once(
                module_cls.__call__, FORWARD, _forward_depth,
                lambda args: {"module": type(args[0]).__name__}))
            self._replace(torch.Tensor, "backward", self._nested_once(
                torch.Tensor.backward, BACKWARD, _backward_depth, None))
            self._replace(torch.autograd, "backward", self._nested_once(
                torch.autograd.backward, BACKWARD, _backward_depth, None))
            optimizer = torch.optim.Optimizer
            self._replace(optimizer, "__init__", self._optimizer_init(optimizer.__init__))
            for subclass in _all_subclasses(optimizer):
                self._wrap_step(subclass)
            iterator = torch.utils.data.dataloader._BaseDataLoaderIter
            self._replace(iterator, "__next__", self._simple(iterator.__next__, DATALOADER_NEXT))

    def _replace(self, owner: Any, attribute: str, wrapper: Any) -> None:
        self._patches.append((owner, attribute, owner.__dict__.get(attribute, getattr(owner, attribute))))
        setattr(owner, attribute, wrapper)

    def _nested_once(self, original: Callable[..., Any], name: str,
                     depth: contextvars.ContextVar[int],
                     attributes: Callable[[Sequence[Any]], dict[str, Any]] | None
                     ) -> Callable[..., Any]:
        auto = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not auto.active or depth.get() > 0:
                return original(*args, **kwargs)
            token = depth.set(1)
            try:
                attrs = attributes(args) if attributes is not None else {}
                with auto._tracker().phase(name, **attrs):
                    return original(*args, **kwargs)
            finally:
                depth.reset(token)

        setattr(wrapper, _MARK, True)
        return wrapper

    def _simple(self, original: Callable[..., Any], name: str) -> Callable[..., Any]:
        auto = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not auto.active:
                return original(*args, **kwargs)
            with auto._tracker().phase(name):
                return original(*args, **kwargs)

        setattr(wrapper, _MARK, True)
        return wrapper

    def _optimizer_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        auto = self

        @functools.wraps(original)
        def wrapper(optimizer: Any, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            if auto.active:
                with auto._lock:
                    auto._wrap_step(type(optimizer))

        return wrapper

    def _wrap_step(self, cls: type) -> None:
        step = cls.__dict__.get("step")
        if step is None or getattr(step, _MARK, False):
            return
        # functools.wraps copies __dict__, so torch's own "hooked" marker survives and torch
        # does not wrap the step a second time.
        self._patches.append((cls, "step", step))
        setattr(cls, "step", self._simple(step, OPTIMIZER_STEP))  # noqa: B010


def _all_subclasses(cls: type) -> list[type]:
    out: list[type] = []
    pending: list[type] = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        out.append(sub)
        pending.extend(sub.__subclasses__())
    return out


class _TorchImportHook(importlib.abc.MetaPathFinder):
    """Calls back once ``import torch`` has finished executing torch/__init__.py."""

    def __init__(self, callback: Callable[[ModuleType], None]) -> None:
        self._callback = callback

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot: find the real spec without us
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _CallbackLoader(spec.loader, self._callback)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as error:  # never break the user's import
            import logging

            logging.getLogger(__name__).warning("memspan: torch auto phases not installed: %s",
                                                error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
