"""Training: optimizer groups, schedule, AMP selection, non-finite skipping, accumulation, and
end-to-end runs of train.py (files, TensorBoard read back, bit-exact resume)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.amp import NonFiniteGuard, select_precision, step_optimizer
from engine.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine
from helpers import run_train, same_training


class _Toy(nn.Module):
    """Encoder (one block trainable, one frozen) + head, like E2Net's parameter layout."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"block": nn.Linear(4, 4), "norm": nn.LayerNorm(4), "frozen": nn.Linear(4, 4)})
        self.encoder.register_parameter("register_tokens", nn.Parameter(torch.zeros(1, 2, 4)))
        self.encoder["frozen"].requires_grad_(False)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 1, 1))


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_decay_and_pretrained_lr():
    model = _Toy()
    pretrained = list(model.encoder.parameters())
    groups = {g["name"]: g for g in param_groups(model, 0.05, encoder_lr_scale=0.1, pretrained=pretrained)}
    assert _names(model, groups["new/decay"]) == {"head.0.weight", "head.2.weight"}
    assert _names(model, groups["new/no_decay"]) == {"head.0.bias", "head.1.weight", "head.1.bias", "head.2.bias"}
    assert _names(model, groups["pretrained/decay"]) == {"encoder.block.weight"}
    assert _names(model, groups["pretrained/no_decay"]) == {
        "encoder.block.bias",
        "encoder.norm.weight",
        "encoder.norm.bias",
        "encoder.register_tokens",
    }
    assert groups["new/no_decay"]["weight_decay"] == 0 and groups["new/decay"]["weight_decay"] == 0.05
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, encoder_lr_scale=0.1, pretrained=pretrained)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["new/decay"] == 1e-3 and lrs["pretrained/decay"] == pytest.approx(1e-4)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)  # frozen ones left out


def test_warmup_then_cosine_per_iteration():
    f = [warmup_cosine(s, total_steps=100, warmup_steps=10, min_ratio=0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # falling after
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 100, 10, 0.01) == pytest.approx(0.01)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0)
    sched = build_scheduler(opt, total_steps=100, warmup_steps=10, min_ratio=0.01)
    for s in range(30):
        assert opt.param_groups[0]["lr"] == pytest.approx(f[s])
        opt.step()
        sched.step()


def test_precision_selection_on_cpu():
    cpu = torch.device("cpu")
    bf16 = select_precision("bf16", cpu)
    assert bf16.dtype == torch.bfloat16 and not bf16.grad_scaler().is_enabled()
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    off = select_precision("off", cpu)
    with off.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert select_precision("fp16", cpu).grad_scaler().is_enabled()
    with pytest.raises(ValueError, match="train.amp=auto must be resolved"):
        select_precision("auto", cpu)


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_step_is_skipped(fused):
    model = nn.Linear(3, 1)
    opt = build_optimizer(model, lr=0.1, weight_decay=0.05, fused=fused)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.randn(4, 3)).sum().backward()
    step_optimizer(opt, scaler, torch.tensor(True))  # one real step, so AdamW has state to protect
    assert opt.state and all(float(s["step"]) == 1 for s in opt.state.values())
    before = [p.detach().clone() for p in model.parameters()]
    step_optimizer(opt, scaler, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(float(s["step"]) == 1 for s in opt.state.values())  # Adam's step count not advanced
    step_optimizer(opt, scaler, torch.tensor(True))
    assert not torch.equal(before[0], model.weight)


def test_guard_stops_only_after_a_streak():
    guard = NonFiniteGuard(limit=3, device=torch.device("cpu"))
    for finite in [False, False, True, False, False, True]:
        guard.update(torch.tensor(finite))
    assert guard.check() == 4  # four skipped, never three in a row
    for _ in range(3):
        guard.update(torch.tensor(False))
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row"):
        guard.check()


# --------------------------------------------------------------------------- the loop, in process
class _PixelNet(nn.Module):
    """A 1x1 conv returning [coarse, final] logits, like E2Net's output list."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        y = self.conv(x)
        return [y, y]


def _pixel_loss(outputs, mask):
    loss = nn.functional.binary_cross_entropy_with_logits(outputs[-1], mask)
    return loss, {"bce": loss}


def _one_epoch(batches, overrides, model=None):
    from config import load_config
    from engine.logger import RunWriter
    from engine.state import TrainState
    from engine.step import train_one_epoch
    from engine.stop import StopRequest

    cfg = load_config(None, ["train.amp=off", "train.log_interval=1", *overrides])
    model = model or _PixelNet()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    precision = select_precision("off", torch.device("cpu"))
    state = TrainState(cfg, model, opt, sched, precision.grad_scaler())
    guard = NonFiniteGuard(cfg.train.max_nonfinite, torch.device("cpu"))
    writer, stop = RunWriter(None, False), StopRequest()
    train_one_epoch(model, batches, _pixel_loss, state, precision=precision, guard=guard, writer=writer, stop=stop)
    step = state.step
    return model, step, guard


def _batches(images, masks, batch_size):
    return [
        {"image": images[i : i + batch_size], "mask": masks[i : i + batch_size]}
        for i in range(0, len(images), batch_size)
    ]


def test_gradient_accumulation_matches_one_big_batch():
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(10, 3, 8, 8, generator=g), (torch.rand(10, 1, 8, 8, generator=g) > 0.5).float()
    big, steps_big, _ = _one_epoch(_batches(images[:8], masks[:8], 4), ["train.accum_steps=1"])
    small, steps_small, _ = _one_epoch(_batches(images[:8], masks[:8], 2), ["train.accum_steps=2"])
    assert steps_big == steps_small == 2
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # 5 batches with accum 4: a group of 4, then a 1-batch tail averaged over its own size
    odd, steps_odd, _ = _one_epoch(_batches(images, masks, 2), ["train.accum_steps=4"])
    ref, _, _ = _one_epoch(_batches(images, masks, 8), ["train.accum_steps=1"])
    assert steps_odd == 2
    for a, b in zip(odd.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of")  # the skipped first step
@pytest.mark.parametrize("clip", ["train.grad_clip=1.0", "train.grad_clip=0"])  # 0: no clipping, same check
def test_non_finite_losses_skip_steps_then_stop_the_run(clip):
    images, masks = torch.rand(8, 3, 8, 8), torch.ones(8, 1, 8, 8)
    images[2:4] = float("nan")  # one bad batch: skipped, training goes on
    model, steps, guard = _one_epoch(_batches(images, masks, 2), ["train.max_nonfinite=2", clip])
    assert steps == 4 and int(guard.total) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())

    images[:] = float("nan")
    model = _PixelNet()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="2 optimizer steps in a row"):
        _one_epoch(_batches(images, masks, 2), ["train.max_nonfinite=2", clip], model=model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no NaN reached the weights


# --------------------------------------------------------------------------- train.py end to end
def _load(path):
    from engine.checkpoint import load_checkpoint

    return load_checkpoint(path)


def test_run_folder_and_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from config import load_config

    run = tiny_run.straight
    assert {p.name for p in run.iterdir()} == {"config.yaml", "last.pth", "best.pth", "final.pth", "train.log", "tb"}
    assert load_config(run / "config.yaml").train.run_dir == str(run)  # the resolved config
    last, best = _load(run / "last.pth"), _load(run / "best.pth")
    final = _load(run / "final.pth")  # the weights after the last epoch
    assert final["epoch"] == 2 and final["model"].keys() == last["model"].keys()
    assert all(torch.equal(final["model"][k], last["model"][k]) for k in last["model"])
    assert last["epoch"] == 2 and last["step"] == 4 and set(last["metrics"]) >= {"Sm", "MAE", "Em_mean", "Fm_mean"}
    assert best["best"] >= last["metrics"]["Sm"] and best["best"] == best["metrics"]["Sm"]
    assert "optimizer" not in best and "optimizer" in last
    assert not any(k.startswith("encoder.trunk.") for k in last["model"])  # frozen DINOv3 left out
    log_text = (run / "train.log").read_text()
    assert "epoch 2 validation: Sm" in log_text and "new best Sm" in log_text

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    for tag in (
        "train/loss",
        "train/bce",
        "train/iou",
        "train/lr",
        "train/grad_norm",
        "train/images_per_s",
        "val/Sm",
        "val/MAE",
        "val/Em_mean",
        "val/Fm_mean",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/Sm")] == [2, 4]
    assert events.Scalars("val/Sm")[-1].value == pytest.approx(last["metrics"]["Sm"])
    grids = events.Images("val/image_mask_pred_coarse")
    assert len(grids) == 2
    # 4 images x 4 columns under a header row naming the columns
    assert grids[0].width == 4 * 32 + 5 * 2 and grids[0].height > 4 * 32 + 5 * 2


def test_resume_is_bit_identical(tmp_path, tiny_run):
    """2 epochs straight == 1 epoch, stop, resume for the 2nd (CPU, deterministic)."""
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(tiny_run.one_epoch, resumed)
    first = _load(resumed / "last.pth")
    assert (first["epoch"], first["step"]) == (1, 2)
    assert run_train([*tiny_run.args, f"train.run_dir={resumed}", "train.resume=auto"]) == 0
    assert "resumed from" in (resumed / "train.log").read_text()

    a, b = _load(tiny_run.straight / "last.pth"), _load(resumed / "last.pth")
    assert (a["epoch"], a["step"]) == (2, 4)
    same_training(a, b)
    # the resumed epoch really trained: its weights moved away from the epoch-1 checkpoint
    assert any(not torch.equal(first["model"][k], b["model"][k]) for k in b["model"])


def test_cli_errors_are_one_line(tmp_path, tiny_run, capsys):
    assert run_train([*tiny_run.args, "data.image_size=40"]) == 2
    assert "not a multiple of the encoder's patch size 16" in capsys.readouterr().err
    assert run_train([*tiny_run.args, "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert run_train([*tiny_run.args, "model.encoder.layers=[1,2,3,5]"]) == 2  # the tiny encoder has 4 blocks
    assert "model.encoder.layers" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"\x80\x02truncated")
    assert run_train([*tiny_run.args, f"train.run_dir={run}"]) == 1
    assert "last.pth' is truncated or corrupt" in (run / "train.log").read_text()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert run_train([*tiny_run.args, f"train.run_dir={blocker / 'run'}"]) == 1
    assert "train.run_dir" in capsys.readouterr().err


def test_resume_with_a_different_model_is_refused(tmp_path, tiny_run):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run.straight / "last.pth", run / "last.pth")
    assert run_train([*tiny_run.args, f"train.run_dir={run}", "model.channels=24"]) == 1
    text = (run / "train.log").read_text()
    assert "does not fit this model/config" in text and "model.channels: 16 -> 24" in text


def test_best_metric_may_be_the_context_measure(tmp_path, tiny_run):
    """train.best_metric=CCM makes validation read each photo for the CCM, and best.pth is chosen on it."""
    run = tmp_path / "run"
    assert run_train([*tiny_run.args, "train.epochs=1", "train.best_metric=CCM", f"train.run_dir={run}"]) == 0
    best = _load(run / "best.pth")
    assert 0.0 <= best["metrics"]["CCM"] <= 1.0 and best["best"] == best["metrics"]["CCM"]
    assert "new best CCM" in (run / "train.log").read_text()
