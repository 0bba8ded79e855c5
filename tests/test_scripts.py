"""Every entry point and script starts: its imports resolve and --help answers."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import ROOT

ENTRY_POINTS = [
    "train.py",
    "test.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py"),
]


def _help(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Each script's ``--help`` in a fresh interpreter, four at a time: most of a run is importing
    torch and transformers, which several processes do side by side on as many cores."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(ENTRY_POINTS, pool.map(_help, ENTRY_POINTS), strict=True))


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help(script: str, helps) -> None:
    run = helps[script]
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in run.stdout.lower()
