"""Shared fixtures: tiny random DINOv3 models written by scripts/make_tiny_dinov3.py (no network)."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from scripts.make_tiny_dinov3 import make_tiny_dinov3  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dinov3_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(**kwargs) -> folder`` of a tiny random DINOv3 ViT; kwargs as ``make_tiny_dinov3``.

    Folders are cached per kwargs for the whole session, so asking twice costs nothing.
    """
    cache: dict[tuple, Path] = {}
    defaults = {k: v.default for k, v in inspect.signature(make_tiny_dinov3).parameters.items()}

    def factory(**kwargs) -> Path:
        key = tuple(sorted((k, v) for k, v in kwargs.items() if defaults.get(k) != v))
        if key not in cache:
            name = "dinov3-" + "-".join(f"{k}{v}" for k, v in key) if key else "dinov3-default"
            cache[key] = make_tiny_dinov3(tmp_path_factory.mktemp(name[:60]), **kwargs)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_dinov3(tiny_dinov3_factory: Callable[..., Path]) -> Path:
    """Folder of a tiny random DINOv3 ViT: hidden 64, 12 blocks, 2 heads, 4 registers, patch 16."""
    return tiny_dinov3_factory()


@pytest.fixture(autouse=True)
def _restore_logging():
    """Entry points called in-process (train.main, test.main) install log handlers on the root
    logger; remove them after each test so one test's console output never leaks into another's."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_dinov3_factory: Callable[..., Path]) -> Path:
    """Run folder of a finished seconds-long training (``helpers.tiny_model_args``, 12 epochs of 8
    images, each validated: 12 image grids, more than the 10 TensorBoard keeps by default), with
    ``best.pth``, ``tb/`` and ``train.log``; its data (``make_synthetic_cod``, benchmark SynthCOD)
    is the sibling folder ``data``."""
    from helpers import run_train, tiny_model_args
    from scripts.make_synthetic_cod import generate

    root = tmp_path_factory.mktemp("tiny_run")
    generate(root / "data", n_train=10, n_test=3, size=48, seed=0)
    run = root / "checkpoint" / "run"
    args = [
        *tiny_model_args(root / "data", tiny_dinov3_factory(layers=4)),
        "data.val_fraction=0.2",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.epochs=12",
        "train.amp=off",
        f"train.run_dir={run}",
    ]
    assert run_train(args) == 0
    return run
