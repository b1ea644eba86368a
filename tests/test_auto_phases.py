"""Torch auto phases: outermost forward/backward only, optimizer steps, DataLoader, removal."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import Telemetry
from memspan import names
from memspan.auto_phases import TorchAutoPhases


def train_once(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> None:
    for inputs, labels in loader:
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def tiny_job(batches: int) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """A three-layer classifier, its optimizer and a loader of ``batches`` batches of 4."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rows = 4 * batches
    loader = DataLoader(TensorDataset(torch.randn(rows, 8), torch.randint(0, 3, (rows,))),
                        batch_size=4)
    return model, optimizer, loader


def test_auto_phases_wrap_a_training_loop_and_come_off_cleanly(telemetry: Telemetry) -> None:
    original_call = nn.Module.__call__
    original_backward = torch.Tensor.backward
    original_sgd_step = torch.optim.SGD.step
    auto = TorchAutoPhases(lambda: telemetry.tracker)
    auto.install()
    try:
        model, optimizer, loader = tiny_job(batches=3)
        with telemetry.tracker.phase("epoch"):
            train_once(model, optimizer, loader)
    finally:
        auto.uninstall()
    spans = telemetry.finished()
    counts: dict[str, int] = {}
    for span in spans:
        counts[span.name] = counts.get(span.name, 0) + 1
    assert counts["forward"] == 3  # Sequential only, not its three submodules (nor the loss)
    assert counts["backward"] == 3  # Tensor.backward, not again for autograd.backward inside it
    assert counts["optimizer.step"] == 3
    assert counts["dataloader.next"] == 3  # the fetch that finds the loader exhausted is no step
    assert counts["step"] == 3  # one automatic step trace per iteration
    steps = {s.context.span_id: s for s in spans if s.name == "step"}
    assert len({s.context.trace_id for s in steps.values()}) == 3
    for span in spans:
        if span.name in ("forward", "backward", "optimizer.step", "dataloader.next"):
            assert span.parent is not None and span.parent.span_id in steps, span.name
            assert (span.attributes or {})[names.PHASE_PATH] == f"epoch / step / {span.name}"
    forward = next(s for s in spans if s.name == "forward")
    assert (forward.attributes or {})["module"] == "Sequential"
    assert all(s.status.is_ok for s in spans if s.name == "dataloader.next")
    assert nn.Module.__call__ is original_call
    assert torch.Tensor.backward is original_backward
    assert torch.optim.SGD.step is original_sgd_step
    before = len(telemetry.finished())
    model(torch.randn(2, 8)).sum().backward()
    assert len(telemetry.finished()) == before  # nothing is traced once uninstalled


def test_an_error_in_forward_propagates_through_the_phase(telemetry: Telemetry) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")

    auto = TorchAutoPhases(lambda: telemetry.tracker)
    auto.install()
    try:
        error = None
        try:
            Broken()(torch.randn(1))
        except torch.OutOfMemoryError as caught:
            error = caught
    finally:
        auto.uninstall()
    assert error is not None
    forward = telemetry.span("forward")
    assert not forward.status.is_ok
    assert "memspan.oom" in [e.name for e in forward.events]


def test_hooks_install_lazily_when_torch_is_imported_later() -> None:
    script = textwrap.dedent("""
        import sys
        from memspan.auto_phases import TorchAutoPhases
        from memspan.tracker import get_tracker
        assert "torch" not in sys.modules
        auto = TorchAutoPhases(get_tracker)
        auto.install()
        assert "torch" not in sys.modules  # installing never imports torch
        import torch
        print("patched", hasattr(torch.nn.Module.__call__, "__wrapped__"),
              torch.cuda.is_initialized())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "patched True False" in result.stdout


def test_auto_phases_never_double_annotated_code(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 3)

        @tracker.phase("forward")  # the user's own phase on the same boundary
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(8, 8), torch.randint(0, 3, (8,))),
                        batch_size=4)
    auto = TorchAutoPhases(lambda: tracker)
    auto.install()
    try:
        for inputs, labels in loader:
            with tracker.phase("step"):  # the user's own step
                loss = nn.functional.cross_entropy(model(inputs), labels)
                with tracker.phase("backward"):
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    finally:
        auto.uninstall()
    spans = telemetry.finished()
    paths = sorted(str((s.attributes or {})[names.PHASE_PATH]) for s in spans)
    assert paths.count("step") == 2
    assert paths.count("step / forward") == 2
    assert paths.count("step / backward") == 2
    assert paths.count("step / optimizer.step") == 2
    assert paths.count("step / dataloader.next") == 2
    assert not [p for p in paths if "forward / forward" in p or "backward / backward" in p]
    assert not [s for s in spans if (s.attributes or {}).get("module") == "CrossEntropyLoss"]
    by_id = {s.context.span_id: s for s in spans}
    for span in spans:  # every parent is an exported span (no orphans from replaced phases)
        if span.parent is not None:
            assert span.parent.span_id in by_id, span.name


def test_suppress_instrumentation_suppresses_auto_phases_but_not_the_users(
        telemetry: Telemetry) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    auto = TorchAutoPhases(lambda: telemetry.tracker)
    auto.install()
    try:
        model, optimizer, loader = tiny_job(batches=2)
        with suppress_instrumentation(), telemetry.tracker.phase("epoch"):
            train_once(model, optimizer, loader)
        suppressed = [s.name for s in telemetry.finished()]
        train_once(model, optimizer, loader)  # and back on once the block is left
    finally:
        auto.uninstall()
    assert suppressed == ["epoch"]
    assert {"step", "forward", "backward", "optimizer.step"} <= {
        s.name for s in telemetry.finished()}


def test_otel_sdk_disabled_makes_phases_pass_through_and_writes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from launcher_helpers import clean_env, run_python

    result = run_python("""
        import memspan
        memspan.configure(output_dir="out", dump_dir="dumps")
        with memspan.phase("train"), memspan.phase("step", step=1):
            value = 41 + 1
        memspan.shutdown()
        print("ran", value)
    """, tmp_path, env=clean_env(OTEL_SDK_DISABLED="true"))
    assert result.returncode == 0, result.stderr
    assert "ran 42" in result.stdout
    written = {p.name: p.stat().st_size for p in (tmp_path / "out").glob("*")}
    assert all(size == 0 for size in written.values()), written
    assert not (tmp_path / "dumps").exists() or not any((tmp_path / "dumps").rglob("*.json"))
