"""scripts/gpu_check.sh on a machine without a GPU: it says so and stops, having run nothing."""

from __future__ import annotations

import subprocess

import pytest
import torch

from helpers import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs every stage")
def test_gpu_check_without_a_gpu_exits_0_and_says_so(tmp_path):
    out = tmp_path / "check"
    res = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no CUDA device" in res.stdout
    assert "no CUDA device" in (out / "summary.md").read_text()
    assert not (out / "work").exists() and (out / "stages.tsv").read_text() == ""  # nothing ran
