"""The CUDA paths: mixed-precision steps, skipped non-finite steps, device moves of checkpoints,
channels-last and compile, torchrun with NCCL. Run by scripts/gpu_check.sh (``pytest -m cuda``).

Skipped without a GPU. ``GPU_CHECK_DEVICE=cpu`` runs them on the CPU instead (the dry run of
gpu_check.sh), so they cannot rot unseen on machines without one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import build
from config import load_config
from engine.amp import select_precision, step_optimizer
from engine.checkpoint import load_checkpoint, load_weights
from engine.optim import build_optimizer
from helpers import ROOT
from helpers import torchrun as torchrun_cmd

pytestmark = pytest.mark.cuda


@pytest.fixture
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("GPU_CHECK_DEVICE") == "cpu":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (GPU_CHECK_DEVICE=cpu runs it on the CPU)")


def _overrides(encoder: Path, *extra: str) -> list[str]:
    return [
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.channels=16",
        "model.context_heads=2",
        "data.image_size=64",
        *extra,
    ]


def _setup(encoder: Path, device: torch.device, amp: str, *extra: str, fused: bool = False):
    cfg = load_config(str(ROOT / "e2net_dinov3.yaml"), _overrides(encoder, f"train.amp={amp}", *extra))
    torch.manual_seed(0)
    model = build.build_model(cfg).to(device).train()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=fused)
    precision = select_precision(amp, device)
    x = torch.rand(2, 3, 64, 64, device=device)
    y = (torch.rand(2, 1, 64, 64, device=device) > 0.5).float()
    return cfg, model, build.build_loss(cfg), optimizer, precision, x, y


def _step(model, loss_fn, optimizer, precision, scaler, x, y, poison: bool = False) -> torch.Tensor:
    """One optimizer step as train.py takes it; returns the loss. ``poison`` makes it infinite."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with precision.autocast():
        outputs = model(x)
        loss, _ = loss_fn(outputs, y)
    if poison:
        loss = loss * float("inf")
    scaler.scale(loss).backward()
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    finite = torch.isfinite(loss.detach()) if scaler.is_enabled() else torch.isfinite(grad_norm)
    step_optimizer(optimizer, scaler, finite)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _trainable(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_training_steps(tiny_dinov3_factory, device, amp):
    _, model, loss_fn, opt, precision, x, y = _setup(tiny_dinov3_factory(layers=4), device, amp)
    assert precision.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = precision.grad_scaler()
    assert scaler.is_enabled() == (amp == "fp16")
    with precision.autocast():
        assert model(x)[-1].dtype == precision.dtype  # the decoder really computes in low precision
    before = _trainable(model)
    losses = [float(_step(model, loss_fn, opt, precision, scaler, x, y)) for _ in range(3)]
    after = _trainable(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(v.dtype == torch.float32 for v in after.values())  # float32 master weights
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2


def test_fp16_inf_step_is_skipped_by_the_grad_scaler(tiny_dinov3_factory, device):
    _, model, loss_fn, opt, precision, x, y = _setup(tiny_dinov3_factory(layers=4), device, "fp16")
    scaler = precision.grad_scaler()
    _step(model, loss_fn, opt, precision, scaler, x, y)
    before, scale = _trainable(model), scaler.get_scale()
    loss = _step(model, loss_fn, opt, precision, scaler, x, y, poison=True)
    assert not torch.isfinite(loss)
    after = _trainable(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights unchanged
    assert scaler.get_scale() < scale  # and the scale backed off
    _step(model, loss_fn, opt, precision, scaler, x, y)  # training goes on
    assert any(not torch.equal(before[k], v) for k, v in _trainable(model).items())


def test_nonfinite_step_is_skipped_by_fused_adamws_flag(tiny_dinov3_factory, device):
    _, model, loss_fn, opt, precision, x, y = _setup(tiny_dinov3_factory(layers=4), device, "bf16", fused=True)
    assert opt.defaults["fused"]
    scaler = precision.grad_scaler()
    _step(model, loss_fn, opt, precision, scaler, x, y)
    before = _trainable(model)
    moments = [(s["exp_avg"].clone(), s["exp_avg_sq"].clone()) for s in opt.state.values()]
    steps = [float(s["step"]) for s in opt.state.values()]
    _step(model, loss_fn, opt, precision, scaler, x, y, poison=True)
    assert all(torch.equal(before[k], v) for k, v in _trainable(model).items())  # weights unchanged
    assert [float(s["step"]) for s in opt.state.values()] == steps  # the step count too
    for (m, v), s in zip(moments, opt.state.values(), strict=True):  # and both moments
        assert torch.equal(m, s["exp_avg"]) and torch.equal(v, s["exp_avg_sq"])
    _step(model, loss_fn, opt, precision, scaler, x, y)
    assert [float(s["step"]) for s in opt.state.values()] == [v + 1 for v in steps]


@pytest.mark.parametrize("variant", ["model.channels_last=true", "model.compile=true"])
def test_channels_last_and_compile_match_the_plain_model(tiny_dinov3_factory, device, variant):
    encoder = tiny_dinov3_factory(layers=4)
    _, plain, loss_fn, *_, x, y = _setup(encoder, device, "off")
    _, other, *_ = _setup(encoder, device, "off", variant)
    load_weights(other, plain.trainable_state_dict(), Path("plain.pth"))
    for m in (plain, other):
        m.eval()
    with torch.no_grad():
        a, b = plain(x), other(x)
    assert len(a) == len(b)
    for p, q in zip(a, b):
        torch.testing.assert_close(q.float(), p.float(), rtol=1e-3, atol=2e-3)
    # gradients too: one training loss and its backward through the variant
    plain.train(), other.train()
    la, _ = loss_fn(plain(x), y)
    lb, _ = loss_fn(other(x), y)
    la.backward(), lb.backward()
    torch.testing.assert_close(lb, la, rtol=1e-3, atol=1e-4)
    ga = torch.cat([p.grad.flatten() for p in plain.parameters() if p.grad is not None])
    gb = torch.cat([p.grad.flatten() for p in other.parameters() if p.grad is not None])
    assert torch.nn.functional.cosine_similarity(ga, gb, dim=0) > 0.999


def _train_cmd(encoder: Path, data: Path, run: Path, epochs: int, torchrun: bool = False) -> list[str]:
    launcher = torchrun_cmd(1)[1:] if torchrun else []
    return [
        sys.executable,
        *launcher,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "e2net_dinov3.yaml"),
        *_overrides(encoder),
        "data.image_size=32",
        f"data.root={data}",
        "data.val_fraction=0.25",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.log_interval=1",
        f"train.epochs={epochs}",
        f"train.run_dir={run}",
    ]


def _run(cmd: list[str], **env: str) -> str:
    full = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    res = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    from scripts.make_synthetic_cod import generate

    generate(tmp_path / "data", n_train=8, n_test=0, size=48, seed=0)
    return tmp_path / "data"


def test_checkpoint_written_on_the_gpu_resumes_on_the_cpu_and_back(tiny_dinov3_factory, device, tiny_data, tmp_path):
    encoder, run = tiny_dinov3_factory(layers=4), tmp_path / "run"
    _run(_train_cmd(encoder, tiny_data, run, 1))
    _run(_train_cmd(encoder, tiny_data, run, 2), CUDA_VISIBLE_DEVICES="")  # no GPU visible: the CPU
    _run(_train_cmd(encoder, tiny_data, run, 3))
    log = (run / "train.log").read_text()
    devices = [line.split(" on ")[-1].strip() for line in log.splitlines() if "process(es) on" in line]
    assert devices == [str(device if device.type == "cpu" else "cuda:0"), "cpu", devices[0]], devices
    assert log.count("resumed from") == 2
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 3 * 3  # 6 training images at batch 2: 3 steps an epoch
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_torchrun_one_process_trains_and_resumes(tiny_dinov3_factory, device, tiny_data, tmp_path):
    encoder, run = tiny_dinov3_factory(layers=4), tmp_path / "run"
    out = _run(_train_cmd(encoder, tiny_data, run, 1, torchrun=True), NCCL_DEBUG="INFO")
    if device.type == "cuda":
        assert "NCCL INFO" in out  # the process group really is NCCL
    out = _run(_train_cmd(encoder, tiny_data, run, 2, torchrun=True))
    log = (run / "train.log").read_text()
    assert "1 process(es) on" in log and log.count("resumed from") == 1
    assert (load_checkpoint(run / "last.pth")["epoch"], load_checkpoint(run / "last.pth")["step"]) == (2, 6)
