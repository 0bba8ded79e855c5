"""Helpers shared by test modules (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_train(args: list[str]) -> int:
    """train.main in this process, restoring the process-wide torch flags a run sets."""
    import train

    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        return train.main(args)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def load_test_cli(module_name: str) -> ModuleType:
    """test.py as a module (its file name would otherwise clash with the standard library's `test`)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model_args(data: Path, encoder: Path) -> list[str]:
    """train.py arguments for a seconds-long model: the default recipe on a 4-block tiny DINOv3
    (``tiny_dinov3_factory(layers=4)``), width 16, 32-px images from ``data``, in float32
    (``train.amp=off``: no CPU probe, the same numbers on every host). Append the run's own
    ``key=value`` overrides (a later value for the same key wins, e.g. ``train.amp=auto``)."""
    return [
        "--config",
        str(ROOT / "e2net_dinov3.yaml"),
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.channels=16",
        "model.context_heads=2",
        f"data.root={data}",
        "data.image_size=32",
        "train.amp=off",
    ]


def torchrun(nproc: int) -> list[str]:
    """The command that launches ``nproc`` local processes of a script the way users run DDP."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
