"""scripts/benchmark.py ratios and the frozen-weight dtype that build_model picks from train.amp."""

from __future__ import annotations

import pytest
import torch

import build
from build import frozen_weights_dtype
from config import load_config
from scripts import benchmark


def _phases(autocast: str) -> dict:
    return {
        "matmul": {
            "bf16_flops_per_s": 100e9,
            "fp32_flops_per_s": 50e9,
            "bf16_flops_per_cpu_s": 50e9,
            "fp32_flops_per_cpu_s": 25e9,
        },
        "encoder": {"s": 2.0, "cpu_s": 4.0, "flops": 140e9, "peak_bytes": 100, "autocast": autocast},
        "train": {"s": 3.0, "cpu_s": 6.0, "flops": 300e9, "peak_bytes": 150},
        "infer": {"s": 2.4, "cpu_s": 4.4, "flops": 160e9, "peak_bytes": 120},
        "loader": {"images_per_s_per_worker": 160.0, "images_per_cpu_s": 170.0},
    }


def test_ratios_follow_the_definitions_of_the_issue():
    q = benchmark._ratios(_phases("bfloat16"))
    assert q["encoder_fraction_of_peak"] == pytest.approx(0.70)  # 70 GFLOP/s of a 100 GFLOP/s bf16 peak
    assert q["train_step_over_encoder"] == pytest.approx(1.5)
    assert q["inference_over_encoder"] == pytest.approx(1.2)
    assert q["train_mem_over_inference_mem"] == pytest.approx(1.25)
    assert q["loader_images_per_s_per_worker"] == 160.0
    assert q["train_step_over_encoder_cpu"] == pytest.approx(1.5)


def test_data_ratios_from_the_loader_and_feed_phases():
    r = _phases("bfloat16")
    r["loader"]["device_augment_images_per_s"] = 900.0
    feed = {"wait_share": 0.25, "images_per_s": 300.0}
    r["feed"] = {"workers": feed, "device": {**feed, "wait_share": 0.0}, "load_avg_1min": [1.0, 1.2]}
    q = benchmark._ratios(r)
    assert q["device_augment_images_per_s"] == 900.0
    assert (q["data_wait_share_workers"], q["data_wait_share_device"]) == (0.25, 0.0)
    assert "data_wait_share_workers" not in benchmark._ratios(_phases("bfloat16"))  # feed phase left out


def test_activation_checkpointing_ratios_from_the_train_no_ckpt_phase():
    r = _phases("off")
    assert "train_mem_over_inference_mem_no_ckpt" not in benchmark._ratios(r)  # phase not run
    r["train_no_ckpt"] = {"s": 2.4, "cpu_s": 5.0, "flops": 300e9, "peak_bytes": 480}
    q = benchmark._ratios(r)
    assert q["train_mem_over_inference_mem_no_ckpt"] == pytest.approx(4.0)  # 480 / 120
    assert q["activation_checkpointing_peak_ratio"] == pytest.approx(150 / 480)
    assert q["activation_checkpointing_time_added"] == pytest.approx(0.25)  # 3.0 s against 2.4 s
    assert q["activation_checkpointing_cpu_time_added"] == pytest.approx(0.2)


def test_fp32_encoder_is_compared_with_the_fp32_peak():
    assert benchmark._ratios(_phases("off"))["encoder_fraction_of_peak"] == pytest.approx(1.4)


def test_best_peak_is_the_faster_dtype_whichever_the_encoder_used():
    slow_bf16 = _phases("off")
    slow_bf16["matmul"]["bf16_flops_per_s"] = 20e9  # bf16 slower than fp32 (50 GFLOP/s), as on CPUs without AMX
    q = benchmark._ratios(slow_bf16)
    assert q["encoder_fraction_of_best_peak"] == pytest.approx(70e9 / 50e9)
    assert q["encoder_fraction_of_peak"] == pytest.approx(70e9 / 50e9)
    q = benchmark._ratios(_phases("bfloat16"))  # bf16 100 GFLOP/s is the best peak
    assert q["encoder_fraction_of_best_peak"] == pytest.approx(0.70)


@pytest.mark.parametrize(
    "setting, amp, want",
    [
        ("auto", "bf16", torch.bfloat16),
        ("auto", "off", torch.float32),
        ("auto", "fp16", torch.float32),
        ("float32", "bf16", torch.float32),
        ("bfloat16", "off", torch.bfloat16),
    ],
)
def test_auto_weights_dtype_follows_the_autocast_dtype(setting, amp, want):
    assert frozen_weights_dtype(setting, amp) == want


def test_weights_dtype_needs_a_resolved_amp():
    with pytest.raises(ValueError, match="train.amp=auto must be resolved"):
        frozen_weights_dtype("auto", "auto")


def test_build_model_stores_frozen_weights_in_bf16_under_bf16_autocast(tiny_dinov3):
    dtypes = {}
    for amp in ("bf16", "off"):
        cfg = load_config(
            None,
            [
                f"model.encoder.pretrained_path={tiny_dinov3}",
                "model.encoder.name=tiny",
                "model.channels=32",
                f"train.amp={amp}",
            ],
        )
        model = build.build_model(cfg)
        dtypes[amp] = {p.dtype for p in model.encoder.trunk.parameters() if not p.requires_grad}
        assert {p.dtype for p in model.decoder.parameters()} == {torch.float32}
    assert dtypes == {"bf16": {torch.bfloat16}, "off": {torch.float32}}
