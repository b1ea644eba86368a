"""Phases for an un-annotated PyTorch loop: one step trace per iteration, forward, backward,
optimizer.step and dataloader.next inside it.

Installed by the instrumentor. memspan never imports torch for this: if torch is already
imported the hooks go in at once, otherwise a one-shot import hook waits for ``import torch``
to finish and installs them then (``opentelemetry-instrument`` loads memspan before the
user's script imports anything). Patches use ``wrapt`` (the contrib idiom): each wrapped
callable keeps ``__wrapped__``, and :meth:`TorchAutoPhases.uninstall` unwraps every one.

Invariants:

- One iteration is one automatic ``step`` phase that starts a trace: it opens at
  ``DataLoader`` ``__next__`` (or at ``optimizer.step`` in a loop without a DataLoader) when no
  trace-root phase runs in the context, and closes when ``optimizer.step`` returns or at the
  next ``__next__``; the fetch that finds the DataLoader exhausted is not an iteration (that
  step and its fetch are not exported).
- ``forward`` wraps only the outermost ``nn.Module`` call (submodule calls inside it are not
  phases) and never a loss module's; ``backward`` only the outermost of
  ``Tensor.backward``/``torch.autograd.backward`` (the first calls the second).
- Auto phases never double the user's: an auto phase is not opened where a user phase of the
  same name is running, and a user phase opened directly inside an auto phase of its name takes
  its place (:meth:`memspan.phases.core.PhaseCore.open`).
- :meth:`TorchAutoPhases.uninstall` puts every original back, also where torch wrapped a
  wrapper of ours again (its optimizer-step profiling hook does).
- Exceptions (an OOM in forward, say) propagate unchanged through the wrappers; the phase
  records them like any other phase.
"""

from __future__ import annotations

import contextvars
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

if TYPE_CHECKING:
    from memspan.phases.core import PhaseCore
    from memspan.phases.record import PhaseSpan
    from memspan.tracker import Tracker

_logger = logging.getLogger(__name__)

STEP = "step"
FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER_STEP = "optimizer.step"
DATALOADER_NEXT = "dataloader.next"

_forward_depth: contextvars.ContextVar[int] = contextvars.ContextVar("memspan_forward", default=0)
_backward_depth: contextvars.ContextVar[int] = contextvars.ContextVar("memspan_backward", default=0)
#: the automatic step open in this context (and the core that opened it)
_auto_step: contextvars.ContextVar[tuple[PhaseCore, PhaseSpan] | None] = contextvars.ContextVar(
    "memspan_auto_step", default=None)


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
                if isinstance(vars(owner).get(attribute), wrapt.ObjectProxy):
                    unwrap(owner, attribute)
                else:  # someone (torch's step profiling hook) wrapped our wrapper
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
            loss = torch.nn.modules.loss._Loss
            self._wrap(torch.nn.Module, "__call__", self._forward(loss))
            self._wrap(torch.Tensor, "backward", self._backward)
            self._wrap(torch.autograd, "backward", self._backward)
            self._wrap(torch.optim.Optimizer, "__init__", self._optimizer_init)
            for subclass in _all_subclasses(torch.optim.Optimizer):
                self._wrap_step(subclass)
            iterator = torch.utils.data.dataloader._BaseDataLoaderIter
            self._wrap(iterator, "__next__", self._next_batch)

    def _wrap(self, owner: Any, attribute: str, wrapper: Callable[..., Any]) -> None:
        original = vars(owner).get(attribute, getattr(owner, attribute))
        wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        self._patches.append((owner, attribute, original))

    def _wrap_step(self, cls: type) -> None:
        step = cls.__dict__.get("step")
        if step is None or isinstance(step, wrapt.ObjectProxy):
            return
        # The wrapper proxies attribute access, so torch's own "hooked" marker on the step
        # stays visible and torch does not wrap the step a second time.
        self._wrap(cls, "step", self._optimizer_step)

    # -- the wrappers ---------------------------------------------------------------------------
    def _core(self) -> PhaseCore | None:
        """The core to open auto phases on; None while uninstalled or while the caller
        suppresses instrumentation (``suppress_instrumentation()``, as every OTel
        instrumentation honours it)."""
        if not self.active or not is_instrumentation_enabled():
            return None
        return self._tracker().phases

    def _forward(self, loss_type: type) -> Callable[..., Any]:
        def wrapper(wrapped: Callable[..., Any], module: Any, args: Any, kwargs: Any) -> Any:
            # cheapest test first: most module calls are submodules of a forward in progress
            if _forward_depth.get() > 0 or isinstance(module, loss_type):
                return wrapped(*args, **kwargs)
            core = self._core()
            if core is None:
                return wrapped(*args, **kwargs)
            token = _forward_depth.set(1)
            try:
                return _in_phase(core, FORWARD, {"module": type(module).__name__}, wrapped,
                                 args, kwargs)
            finally:
                _forward_depth.reset(token)

        return wrapper

    def _backward(self, wrapped: Callable[..., Any], instance: Any, args: Any,
                  kwargs: Any) -> Any:
        if _backward_depth.get() > 0:
            return wrapped(*args, **kwargs)
        core = self._core()
        if core is None:
            return wrapped(*args, **kwargs)
        token = _backward_depth.set(1)
        try:
            return _in_phase(core, BACKWARD, None, wrapped, args, kwargs)
        finally:
            _backward_depth.reset(token)

    def _optimizer_init(self, wrapped: Callable[..., Any], optimizer: Any, args: Any,
                        kwargs: Any) -> None:
        wrapped(*args, **kwargs)
        if self.active:
            with self._lock:
                self._wrap_step(type(optimizer))

    def _optimizer_step(self, wrapped: Callable[..., Any], instance: Any, args: Any,
                        kwargs: Any) -> Any:
        core = self._core()
        if core is None:
            return wrapped(*args, **kwargs)
        _open_step(core)  # a loop without a DataLoader: the optimizer step is the step
        try:
            return _in_phase(core, OPTIMIZER_STEP, None, wrapped, args, kwargs)
        finally:
            _close_step()

    def _next_batch(self, wrapped: Callable[..., Any], instance: Any, args: Any,
                    kwargs: Any) -> Any:
        core = self._core()
        if core is None:
            return wrapped(*args, **kwargs)
        _close_step()  # the previous iteration ends where the next batch is fetched
        _open_step(core)
        try:
            return _in_phase(core, DATALOADER_NEXT, None, wrapped, args, kwargs,
                             exhausted_is_no_step=True)
        except StopIteration:
            _close_step(discard=True)  # the loop is over: the empty fetch is not an iteration
            raise


def _in_phase(core: PhaseCore, name: str, attributes: dict[str, Any] | None,
              wrapped: Callable[..., Any], args: Any, kwargs: Any, *,
              exhausted_is_no_step: bool = False) -> Any:
    """Run ``wrapped`` inside an auto phase. ``exhausted_is_no_step``: a ``StopIteration``
    means the loop is over, so the automatic step around it is discarded before this phase
    ends (on the ``sync``/``sdk`` paths its span would otherwise go out at its exit)."""
    phase = core.open(name, attributes, auto=True)
    if phase is None:  # a user phase of this name runs here (or memspan failed): no double
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as error:
        if exhausted_is_no_step and isinstance(error, StopIteration):
            _discard_step()
        core.close(phase, error)
        raise
    core.close(phase, None)
    return result


def _open_step(core: PhaseCore) -> bool:
    """Open an automatic step where no trace-root phase runs; True when one was opened."""
    if _auto_step.get() is not None or core.in_trace_root():
        return False
    phase = core.open(STEP, None, True, auto=True)
    if phase is None:
        return False
    _auto_step.set((core, phase))
    return True


def _discard_step() -> None:
    """Mark the automatic step of this context as no iteration (nothing of it is exported);
    it still closes through :func:`_close_step`."""
    opened = _auto_step.get()
    if opened is not None:
        opened[1].dissolved = True


def _close_step(*, discard: bool = False) -> None:
    """Close the automatic step of this context; ``discard``: export nothing of it."""
    opened = _auto_step.get()
    if opened is None:
        return
    _auto_step.set(None)
    core, phase = opened
    if discard:
        phase.dissolved = True
    core.close(phase, None)


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
            _logger.warning("memspan: torch auto phases not installed: %s", error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
