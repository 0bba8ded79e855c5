"""Test-time augmentation: views, sizes rounded to the patch, probability averaging, test.py's record of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from build import build_model
from engine.tta import TestTimeAugmentation, describe, scaled_size
from helpers import load_test_cli


class Probe(nn.Module):
    """A small conv net that is not mirror-symmetric, and remembers the input sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, (3, 5), padding=(1, 2))
        self.seen: list[tuple[int, int, int]] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.seen.append((x.shape[0], *x.shape[-2:]))
        ramp = torch.linspace(-2, 2, x.shape[-1])  # breaks left/right symmetry
        final = self.conv(x) + ramp
        return [final * 0.5, final]


def test_flip_averages_probabilities_of_both_views() -> None:
    net, x = Probe(), torch.rand(2, 3, 32, 48)
    out = TestTimeAugmentation(net, patch_size=8, hflip=True, scales=[1.0])(x)[-1]
    plain = torch.sigmoid(net(x)[-1])
    mirrored = torch.sigmoid(net(x.flip(-1))[-1]).flip(-1)
    expected = (plain + mirrored) / 2
    assert torch.allclose(torch.sigmoid(out), expected, atol=1e-6)
    # probability space, not logits: the two differ for this net
    logit_mean = torch.sigmoid((net(x)[-1] + net(x.flip(-1))[-1].flip(-1)) / 2)
    assert (logit_mean - expected).abs().max() > 1e-3


def test_scales_are_rounded_to_the_patch_and_maps_come_back_at_input_size() -> None:
    net = Probe()
    tta = TestTimeAugmentation(net, patch_size=16, hflip=False, scales=[0.75, 1.0, 1.3])
    out = tta(torch.rand(3, 3, 96, 64))[-1]
    assert out.shape == (3, 1, 96, 64)
    # 96 * 0.75 = 72 is 4.5 patches: rounded half to even, 64
    assert net.seen == [(3, scaled_size(96, 0.75, 16), 48), (3, 96, 64), (3, 128, 80)]
    assert all(h % 16 == 0 and w % 16 == 0 for _, h, w in net.seen)
    assert scaled_size(20, 0.25, 16) == 16  # never below one patch


def test_single_plain_view_is_the_model_itself() -> None:
    net, x = Probe(), torch.rand(1, 3, 24, 24)
    out = TestTimeAugmentation(net, patch_size=8, hflip=False, scales=[1.0])(x)[-1]
    assert torch.allclose(torch.sigmoid(out), torch.sigmoid(net(x)[-1]), atol=1e-6)
    assert describe(False, [1.0]) == "" and describe(True, [0.75, 1.0]) == "tta-hflip-x0.75-x1"
    with pytest.raises(ValueError, match="scales"):
        TestTimeAugmentation(net, patch_size=8, scales=[0.0])


def test_test_py_records_tta_and_it_changes_the_scores(tmp_path: Path, tiny_dinov3: Path) -> None:
    from config import load_config, to_dict
    from engine.checkpoint import save_checkpoint
    from scripts.make_synthetic_cod import generate

    cli = load_test_cli("e2net_test_cli_tta")
    data = tmp_path / "data"
    generate(data, n_train=0, n_test=4, size=64, seed=1)
    cfg = load_config(
        None,
        [
            f"model.encoder.pretrained_path={tiny_dinov3}",
            f"data.root={data}",
            "data.image_size=64",
            "model.channels=16",
            "eval.batch_size=4",
            "train.num_workers=0",
            "train.amp=off",
        ],
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "best.pth"
    model = build_model(cfg)
    save_checkpoint(ckpt, {"model": model.trainable_state_dict(), "config": to_dict(cfg), "epoch": 1, "step": 1})
    common = ["--ckpt", str(ckpt), "--workers", "1", "--no-report"]
    assert cli.main(common + ["--out", str(tmp_path / "plain"), "train.amp=off"]) == 0
    assert (
        cli.main(
            common
            + ["--out", str(tmp_path / "tta"), "train.amp=off", "eval.tta.hflip=true", "eval.tta.scales=[0.75,1.25]"]
        )
        == 0
    )
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    tta = json.loads((tmp_path / "tta" / "results.json").read_text())
    bench = next(iter(plain))
    assert "tta" not in plain[bench]
    assert tta[bench]["tta"] == {"hflip": True, "scales": [0.75, 1.25]}
    assert tta[bench]["MAE"] != plain[bench]["MAE"]
    assert "run/best+tta-hflip-x0.75-x1.25" in (tmp_path / "tta" / "results.md").read_text()
