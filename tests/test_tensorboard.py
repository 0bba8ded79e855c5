"""What a researcher reads in TensorBoard: labelled grids, the config as text, test metrics at the end of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.logger import TENSORBOARD_COMMAND, labelled_grid
from helpers import run_train, tiny_model_args


def test_grid_has_a_header_naming_each_column() -> None:
    tiles = torch.zeros(2, 4, 3, 40, 40)  # black tiles: only the header can hold dark text on white
    grid = labelled_grid(tiles, ["image", "mask", "prediction", "coarse map"], padding=2)
    header_h = grid.shape[1] - (2 * 40 + 3 * 2)
    assert grid.shape[2] == 4 * 40 + 5 * 2 and 8 <= header_h <= 24
    header = grid[:, :header_h].mean(0)
    for col in range(4):  # dark text pixels inside every column's span
        x0 = 2 + col * 42
        assert (header[:, x0 : x0 + 40] < 0.5).sum() > 10, col
    assert torch.equal(grid[:, header_h + 2 : header_h + 42, 2:42], tiles[0, 0])  # the tiles are untouched
    with pytest.raises(ValueError, match="labels"):
        labelled_grid(tiles, ["image"])


def test_training_logs_config_and_test_metrics(tmp_path: Path, tiny_dinov3_factory, caplog) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scripts.make_synthetic_cod import generate

    data = tmp_path / "data"
    generate(data, n_train=8, n_test=3, size=48, seed=0)
    run = tmp_path / "checkpoint" / "run"
    args = [
        *tiny_model_args(data, tiny_dinov3_factory(layers=4)),
        "data.val_fraction=0.25",
        "data.test_sets=[SynthCOD]",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.epochs=1",
        f"train.run_dir={run}",
    ]
    with caplog.at_level("INFO"):
        assert run_train(args) == 0
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    scalars = events.Tags()["scalars"]
    for key in ("Sm", "wFm", "MAE", "Em_mean", "Fm_max"):
        assert f"test/SynthCOD/{key}" in scalars
    sm = events.Scalars("test/SynthCOD/Sm")
    assert len(sm) == 1 and 0.0 <= sm[0].value <= 1.0
    assert "test/SynthCOD/image_mask_pred_coarse" in events.Tags()["images"]
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "test_sets:" in config and "SynthCOD" in config and f"run_dir: {run}" in config
    text = caplog.text
    assert "test SynthCOD (best.pth, 3 images): Sm" in text
    assert TENSORBOARD_COMMAND.format(logdir=f"{run.parent}/") in text


def test_a_missing_test_set_fails_before_training(tmp_path: Path, tiny_dinov3_factory, caplog) -> None:
    from scripts.make_synthetic_cod import generate

    data = tmp_path / "data"
    generate(data, n_train=4, n_test=1, size=48, seed=0)
    args = [
        *tiny_model_args(data, tiny_dinov3_factory(layers=4)),
        "data.test_sets=[NC4K]",
        "train.num_workers=0",
        f"train.run_dir={tmp_path / 'run'}",
    ]
    assert run_train(args) == 1
    assert "test benchmark 'NC4K' not found" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "last.pth").exists()
