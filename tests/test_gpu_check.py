"""scripts/gpu_check.sh on a machine without a GPU: it says so and stops, having run nothing."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch


def background_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """The script as a user runs it, in the session's background launches."""
    if "test_gpu_check_without_a_gpu_exits_0_and_says_so" not in tests:
        return {}
    if torch.cuda.is_available():
        return {}
    return {"gpu_check_no_gpu": shlex.join(["bash", "scripts/gpu_check.sh", str(folder / "no_gpu")])}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs every stage")
def test_gpu_check_without_a_gpu_exits_0_and_says_so(background):
    (code,), printed = background.result("gpu_check_no_gpu")
    out = background.folder / "no_gpu"
    assert code == 0, printed[-2000:]
    assert "no CUDA device" in printed
    assert "no CUDA device" in (out / "summary.md").read_text()
    assert not (out / "work").exists() and (out / "stages.tsv").read_text() == ""  # nothing ran
