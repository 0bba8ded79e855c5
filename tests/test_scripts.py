"""Every entry point and script starts: its imports resolve and --help answers."""

import subprocess
import sys

import pytest

from helpers import ROOT

ENTRY_POINTS = [
    "train.py",
    "test.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py"),
]


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help(script: str) -> None:
    run = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in run.stdout.lower()
