"""The adapter recipes end to end on tiny frozen trunks: config checks, what trains, exact resume,
checkpoints without the trunk, test.py scoring, the per-epoch cosine. (Adapters under two-process
DDP: tests/test_lora_training.py, beside LoRA.)"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from build import build_model, check_config
from config import ConfigError, load_config
from engine.checkpoint import load_checkpoint
from engine.optim import build_scheduler
from helpers import load_test_cli, round_trips, run_train

CONFIGS = {"dinov2": "configs/e2net_dinov2_full_adapter.yaml", "dinov3": "configs/e2net_dinov3_adapter.yaml"}
TINY = {"hidden": 32, "layers": 4, "heads": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scripts.make_synthetic_cod import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n_train=8, n_test=3, size=48, seed=0)
    return root


def _args(family: str, factory, data) -> list[str]:
    """A seconds-long run of the published recipe: the config's adapters, pyramid, loss and schedule
    on a 4-block trunk (every block adapted), width 16, 3x3 patches, 2 epochs of 2 steps."""
    encoder = factory(**TINY, family="dinov2", patch=14) if family == "dinov2" else factory(**TINY)
    return [
        "--config",
        CONFIGS[family],
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.channels=16",
        "model.context_heads=2",
        f"data.root={data}",
        f"data.image_size={42 if family == 'dinov2' else 48}",
        "train.num_workers=0",
        "train.deterministic=true",
        "train.lr=1e-2",
        "train.epochs=2",
    ]


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_recipe_trains_round_trips_keeps_only_adapters_and_is_scored(tmp_path, tiny_dinov3_factory, data, family):
    args = _args(family, tiny_dinov3_factory, data)
    run = tmp_path / "run"
    assert run_train([*args, f"train.run_dir={run}"]) == 0
    round_trips(run)  # the adapters' optimizer state back in their group
    last = load_checkpoint(run / "last.pth")
    assert last["step"] == 4

    trunk = [k for k in last["model"] if k.startswith("encoder.trunk.")]
    assert len(trunk) == 4 * 5 and all(".adapters." in k for k in trunk)  # 4 adapters, no trunk weight
    assert any(last["model"][k].abs().max() > 0 for k in trunk if k.endswith("up.weight"))  # up left zero: trained
    groups = {g["name"]: g for g in last["optimizer"]["param_groups"]}
    assert groups["adapter/decay"]["lr_scale"] == 1.0  # the published rate: every parameter at train.lr
    final, best = load_checkpoint(run / "final.pth"), load_checkpoint(run / "best.pth")
    assert final["epoch"] == 2 and all(torch.equal(final["model"][k], v) for k, v in last["model"].items())
    assert best["metrics"]["train_loss"] == best["best"] == last["best"] and best["epoch"] in (1, 2)

    # test.py rebuilds the frozen trunk from its folder, puts the adapters back, and scores.
    cli = load_test_cli(f"e2net_test_cli_adapter_{family}")
    ns = argparse.Namespace(ckpt=run / "final.pth", config=None, overrides=["train.amp=off"], data_root=None)
    model = cli.load_model(ns).model
    state = model.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in final["model"].items())
    assert len(model.encoder.adapter_parameters()) == len(trunk)
    assert cli.main(["--ckpt", str(run / "final.pth"), "--workers", "1", "--no-report", "train.amp=off"]) == 0
    results = json.loads((run / "test" / "final" / "results.json").read_text())
    assert next(iter(results.values()))["n_images"] == 3


def test_only_adapters_and_the_new_layers_get_gradients(tiny_dinov3_factory, data) -> None:
    cfg = load_config(CONFIGS["dinov3"], _args("dinov3", tiny_dinov3_factory, data)[2:])
    plain_cfg = load_config(
        CONFIGS["dinov3"], [*_args("dinov3", tiny_dinov3_factory, data)[2:], "model.encoder.adapter.blocks=[]"]
    )
    torch.manual_seed(0)
    model, plain = build_model(cfg), build_model(plain_cfg)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():  # the same frozen trunk: adapted and plain taps agree exactly before a step
        for m, n in zip(model.encoder.tapped_maps(x), plain.encoder.tapped_maps(x)):
            torch.testing.assert_close(m, n, rtol=0, atol=0)
    model.train()
    sum(o.square().mean() for o in model(x)).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == {n for n, p in model.named_parameters() if p.requires_grad}
    trunk = {n for n in got if n.startswith("encoder.trunk.")}
    assert trunk and all(".adapters." in n for n in trunk)
    assert any(n.startswith("encoder.pyramid.proj.") for n in got) and any(n.startswith("decoder.") for n in got)


def test_adapter_keys_are_checked_before_building(tiny_dinov3_factory, data) -> None:
    base = _args("dinov3", tiny_dinov3_factory, data)[2:]

    def check(*overrides: str) -> None:
        check_config(load_config(CONFIGS["dinov3"], [*base, *overrides]))

    with pytest.raises(ConfigError, match=r"adapter.blocks': adapter blocks \[4\] are not blocks .* 0\.\.3"):
        check("model.encoder.adapter.blocks=[0,4]")
    with pytest.raises(ConfigError, match=r"come after the last tapped block .* 0\.\.1"):
        check("model.encoder.layers=[1,1,2,2]", "model.encoder.adapter.blocks=[3]")
    with pytest.raises(ConfigError, match="list of 0-based block indices"):
        check("model.encoder.adapter.blocks=every")
    with pytest.raises(ConfigError, match="adapters go on a frozen trunk"):
        check("model.encoder.freeze=false")
    with pytest.raises(ConfigError, match=r"init_scale': 0.0 is out of range"):
        check("model.encoder.adapter.init_scale=0")
    check("model.encoder.lora.rank=2")  # adapters and LoRA together


def test_cosine_epoch_is_cosine_annealing_stepped_per_epoch() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.SGD(params, lr=1e-4)
    torchs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    epochs, steps = 5, 3
    scheduler = build_scheduler(ours, epochs, 0, 0.01, steps_per_unit=steps)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torchs, T_max=epochs, eta_min=1e-6)
    for _ in range(epochs):
        for _ in range(steps):  # held for the whole epoch
            assert math.isclose(ours.param_groups[0]["lr"], torchs.param_groups[0]["lr"], rel_tol=1e-9)
            ours.step()
            scheduler.step()
        torchs.step()
        reference.step()


def test_model_info_books_adapter_flops_as_trainable(tiny_dinov3_factory, data) -> None:
    from scripts.model_info import measure

    args = _args("dinov3", tiny_dinov3_factory, data)[2:]
    torch.manual_seed(0)
    adapted = measure(build_model(load_config(CONFIGS["dinov3"], args)), (48, 48))
    plain = measure(build_model(load_config(CONFIGS["dinov3"], [*args, "model.encoder.adapter.blocks=[]"])), (48, 48))
    tokens, width, hidden = 1 + 4 + 3 * 3, 32, 32  # CLS + 4 registers + 3x3 patches; max(32 // 4, 32)
    assert adapted["adapter_params"] == 4 * (2 * width + 2 * width * hidden + 1)
    assert adapted["frozen"] == plain["frozen"]  # the trunk's own FLOPs, adapters moved out
    assert adapted["encoder_trainable"] - plain["encoder_trainable"] == 4 * 2 * tokens * 2 * width * hidden


def test_epoch_loss_sums_resume_or_are_refused(tmp_path) -> None:
    from engine.checkpoint import CheckpointError
    from engine.checkpoint.training import restore_epoch_loss
    from engine.state import TrainState

    state = TrainState(cfg=None, model=None, optimizer=None, scheduler=None, scaler=None)  # one process
    restore_epoch_loss(state, [(6.5, 3)], tmp_path)
    state.add_loss(torch.tensor(1.5), 1)
    assert state.epoch_loss() == 2.0 and state.loss_count == 0  # (6.5 + 1.5) / 4, then reset
    restore_epoch_loss(state, [(6.5, 3), (1.0, 1)], tmp_path)  # saved by two processes: starts over
    assert state.loss_sum is None and math.isnan(state.epoch_loss())
    for bad in ("x", [(1.0,)], [("1", 2)], [(1.0, -1)], [(1.0, True)]):
        with pytest.raises(CheckpointError, match="epoch_loss"):
            restore_epoch_loss(state, bad, tmp_path)
