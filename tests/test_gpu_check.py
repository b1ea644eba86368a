"""scripts/gpu_check.py runs everywhere: on this CPU machine it skips the GPU checks, clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_skips_cleanly_without_a_gpu() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.split(" ", 1)[0] in
             {"PASS", "FAIL", "SKIP"}]
    assert len(lines) == 7
    if not torch.cuda.is_available():
        assert all(line.startswith("SKIP") for line in lines)
        assert "no CUDA device here" in lines[0]
    else:  # pragma: no cover - a GPU machine runs the real checks
        assert not [line for line in lines if line.startswith("FAIL")], result.stdout
