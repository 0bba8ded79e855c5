"""train.amp=auto picks a precision for the device, explicit choices stand, and every choice key is
validated by the config schema alone."""

from __future__ import annotations

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from config import Amp, Backend, ConfigError, Decoder, Norm, WeightsDtype, load_config
from engine import amp as amp_module
from engine.amp import resolve_amp, resolve_precision
from helpers import load_test_cli, run_train, tiny_model_args

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def probe(monkeypatch):
    """Stand-in for the CPU matmul probe: set ``probe.rates``; ``probe.calls`` counts the runs."""

    class Probe:
        def __init__(self) -> None:
            self.rates, self.calls = {"bf16": 60e9, "fp32": 320e9}, 0

        def __call__(self, *args, **kwargs) -> dict:
            self.calls += 1
            return dict(self.rates)

    p = Probe()
    monkeypatch.setattr(amp_module, "cpu_matmul_rates", p)
    return p


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA device whose bfloat16 support the test sets (``gpu(bf16=...)``)."""

    def make(bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Test GPU")

    return make


# --------------------------------------------------------------------------- auto
def test_auto_on_a_cpu_where_bf16_is_slower_is_float32(probe):
    amp, why = resolve_amp("auto", CPU)
    assert amp == "off" and probe.calls == 1
    assert why == "bf16 matmul 60 GFLOP/s vs float32 320 on this CPU"


def test_auto_on_a_cpu_where_bf16_is_faster_is_bf16(probe):
    probe.rates = {"bf16": 900e9, "fp32": 300e9}  # a CPU with AMX
    assert resolve_amp("auto", CPU)[0] == "bf16"


def test_auto_keeps_float32_on_a_near_tie(probe):
    probe.rates = {"bf16": 310e9, "fp32": 300e9}  # within the probe's noise: the exact dtype wins
    assert resolve_amp("auto", CPU)[0] == "off"


def test_auto_on_cuda_is_bf16_where_supported_else_fp16(probe, gpu):
    gpu(bf16=True)
    assert resolve_amp("auto", CUDA) == ("bf16", "Test GPU supports bfloat16")
    gpu(bf16=False)
    amp, why = resolve_amp("auto", CUDA)
    assert amp == "fp16" and "no bfloat16" in why
    assert resolve_precision(load_config(None, []), CUDA).needs_scaler
    assert probe.calls == 0  # the CPU probe is for CPUs


# --------------------------------------------------------------------------- explicit choices
@pytest.mark.parametrize("choice", ["bf16", "fp16", "off"])
def test_an_explicit_choice_is_kept_without_probing(choice, probe, gpu):
    probe.rates = {"bf16": 900e9, "fp32": 1e9}  # would pick bf16 for auto
    assert resolve_amp(choice, CPU)[0] == choice
    gpu(bf16=True)
    assert resolve_amp(choice, CUDA)[0] == choice
    assert probe.calls == 0


def test_explicit_bf16_on_a_gpu_without_it_is_a_config_error(gpu):
    gpu(bf16=False)
    with pytest.raises(ConfigError, match=r"train\.amp.*Test GPU has no bfloat16.*train\.amp=fp16"):
        resolve_amp("bf16", CUDA)


def test_resolution_is_written_into_the_config_and_logged(probe, caplog):
    cfg = load_config(None, [])
    assert cfg.train.amp == "auto"  # the schema default
    with caplog.at_level("INFO", logger="engine.amp"):
        precision = resolve_precision(cfg, CPU)
    assert cfg.train.amp == "off" and precision.dtype is None
    assert "amp=auto -> off (float32): bf16 matmul 60 GFLOP/s vs float32 320 on this CPU" in caplog.text


def test_a_resumed_run_keeps_its_precision_unless_told_otherwise(probe):
    stored = {"train": {"amp": "bf16"}}
    cfg = load_config(None, [])
    assert resolve_precision(cfg, CPU, resumed=stored).amp == "bf16" and probe.calls == 0
    cfg = load_config(None, ["train.amp=off"])
    assert resolve_precision(cfg, CPU, resumed=stored).amp == "off"


# --------------------------------------------------------------------------- a real run
def test_training_saves_the_resolved_precision_a_resume_keeps_it_and_test_py_picks_again(
    tmp_path, tiny_dinov3_factory, probe
):
    from scripts.make_synthetic_cod import generate

    data = tmp_path / "data"
    generate(data, n_train=4, n_test=0, size=40, seed=0)
    run = tmp_path / "run"
    args = [
        *tiny_model_args(data, tiny_dinov3_factory(layers=4)),
        "train.amp=auto",  # the probe (stood in for by ``probe``) decides
        "data.val_fraction=0",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.epochs=2",
        f"train.run_dir={run}",
    ]
    assert run_train([*args, "train.max_steps=1"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["amp"] == "off"
    assert "amp=auto -> off (float32): bf16 matmul" in (run / "train.log").read_text()

    probe.rates = {"bf16": 900e9, "fp32": 300e9}  # the machine would now pick bf16 ...
    assert run_train([*args, "train.max_steps=2"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["amp"] == "off"  # ... but the run keeps what it started with
    assert "kept from the checkpoint being resumed" in (run / "train.log").read_text()
    assert probe.calls == 1

    # test.py picks for its own machine: the stored choice belonged to the training machine.
    cli = load_test_cli("e2net_test_cli_precision")
    trained = cli.load_model(cli.parse_args(["--ckpt", str(run / "last.pth")]))
    cfg, model, precision = trained.cfg, trained.model, trained.precision
    assert precision.amp == cfg.train.amp == "bf16" and probe.calls == 2
    assert {p.dtype for p in model.encoder.trunk.parameters() if not p.requires_grad} == {torch.bfloat16}
    precision = cli.load_model(cli.parse_args(["--ckpt", str(run / "last.pth"), "train.amp=off"])).precision
    assert precision.amp == "off" and probe.calls == 2


# --------------------------------------------------------------------------- choice keys
@pytest.mark.parametrize(
    "key, choices",
    [
        ("train.amp", Amp),
        ("model.encoder.backend", Backend),
        ("model.encoder.weights_dtype", WeightsDtype),
        ("model.norm", Norm),
        ("model.decoder", Decoder),
    ],
)
def test_a_wrong_choice_names_the_key_and_the_valid_values(key, choices):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}=nonsense"])
    message = str(err.value)
    assert message.startswith(f"config key '{key}'") and "nonsense" in message
    assert f"[{', '.join(choices)}]" in message  # every valid value, listed
    for value in choices:  # and each of them loads
        assert OmegaConf.select(load_config(None, [f"{key}={value}"]), key) == value


def test_choices_read_as_plain_strings_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  norm: bn\n  encoder:\n    backend: timm\ntrain:\n  amp: fp16\n")
    cfg = load_config(path)
    assert (cfg.model.norm, cfg.model.encoder.backend, cfg.train.amp) == ("bn", "timm", "fp16")
    assert f"{cfg.train.amp}" == "fp16"  # logs and messages print the name
