"""The config loader: typed sections, dotted overrides, errors that name the key."""

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import config
from config import ConfigError, load_config
from config_checks import check_keys
from encoders.checks import check_encoder
from helpers import ROOT


def _keys(tree: dict, prefix: str = "") -> list[str]:
    """The dotted name of every value in ``tree``."""
    keys = []
    for name, value in tree.items():
        keys += _keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]
    return keys


VALID_KEYS = _keys(config.to_dict(load_config()))


def test_default_recipe_loads_with_overrides():
    cfg = load_config(ROOT / "e2net_dinov3.yaml", ["train.lr=2e-4", "data.multi_scale=[320,384]"])
    assert cfg.train.lr == 2e-4
    assert list(cfg.data.multi_scale) == [320, 384]
    assert cfg.model.encoder.pretrained_path == "checkpoint/dinov3-vitb16-pretrain-lvd1689m"


def test_every_yaml_in_the_repo_loads():
    for path in [ROOT / "e2net_dinov3.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        load_config(path)


def test_dict_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=3"])
    again = load_config(config.to_dict(cfg))
    assert again == cfg
    config.save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("nosection.x=1", "nosection"),
        ("train.lr=abc", "train.lr"),
        ("train.lr=-1e-4", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.amp=fp8", "train.amp"),
        ("train.epochs=2.5", "train.epochs"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("model.decoder=segformer", "model.decoder"),
        ("model.encoder=3", "model.encoder"),
        ("train.best_metric=accuracy", "train.best_metric"),
        ("data.multi_scale=[[64]]", "data.multi_scale"),
        ("model.encoder.layers=[[1],2,3,4]", "model.encoder.layers"),
        ("train.betas=[[0.9],0.9]", "train.betas"),
        ("data.scale=[{a: 1}, 1]", "data.scale"),
        ('train.name="run\\0x"', "train.name"),
        ('data.root="data\\nCOD"', "data.root"),
        ("train.lr=1e308", "train.lr"),
        ("train.weight_decay=1e30", "train.weight_decay"),
        ("train.encoder_lr_scale=.inf", "train.encoder_lr_scale"),
        ("train.warmup_epochs=.inf", "train.warmup_epochs"),
        ("train.grad_clip=.inf", "train.grad_clip"),
        ("loss.bce=1e308", "loss.bce"),
        ("train.seed=1180591620717411303424", "train.seed"),
        ("model.channels=65536", "model.channels"),
        ("train=3", "train"),
        ("train.deterministic=2", "train.deterministic"),
        ("eval.tta.hflip=yes", "eval.tta.hflip"),
        ("train.betas={a: 1}", "train.betas"),
        ("model.encoder.adapter.blocks={a: 1}", "model.encoder.adapter.blocks"),
        ("train.name=${nowhere}", "train.name"),
    ],
)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.lrr=1"])
    assert "train.lr," in str(err.value) and "train.epochs" in str(err.value)
    assert "Did you mean: 'lr'?" in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=20", "config key 'train.lr': 20.0 is out of range (must be in (0, 10])"),
        ("data.val_fraction=1", "config key 'data.val_fraction': 1.0 is out of range (must be in [0, 1))"),
        ("train.plateau_factor=0", "config key 'train.plateau_factor': 0.0 is out of range (must be in (0, 1))"),
        ("data.multi_scale=[320,16]", "config key 'data.multi_scale': 16 is out of range (must be in [32, 8192])"),
        ("train.deterministic=2", "config key 'train.deterministic': 2 is not true or false"),
        ("model.encoder.lora=5", "config key 'model.encoder.lora' is a section, not a value (got 5)"),
    ],
)
def test_error_says_the_key_the_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text(yaml.safe_dump({"train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "nesting", ["[" * 10_000 + "]" * 10_000, "a:\n" + "".join(f"{' ' * i}- \n" for i in range(1, 3000))]
)
def test_yaml_nested_too_deeply_is_one_line_naming_the_file(tmp_path, capsys, nesting):
    """The YAML loader recurses once per level: a file 10,000 levels deep is a ConfigError, not a RecursionError."""
    from helpers import run_train

    path = tmp_path / "deep.yaml"
    path.write_text(nesting)
    with pytest.raises(ConfigError, match=f"config file '{path}' is not valid YAML: nested too deeply"):
        load_config(path)
    with pytest.raises(ConfigError, match="override 'train.lr=.*nested too deeply"):
        load_config(None, [f"train.lr={'[' * 10_000}"])
    assert run_train(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: config file") and str(path) in err, err[-2000:]


def test_image_size_must_tile_into_patches(tiny_dinov3_factory):
    folder = tiny_dinov3_factory(layers=4)
    cfg = load_config(None, ["data.image_size=390", f"model.encoder.pretrained_path={folder}"])
    with pytest.raises(ConfigError, match=r"data\.image_size.*patch size 16 \(try 384 or 400\)"):
        check_encoder(cfg)
    cfg = load_config(None, ["data.multi_scale=[320,330]", f"model.encoder.pretrained_path={folder}"])
    with pytest.raises(ConfigError, match=r"data\.multi_scale.*330.*\(try 336 or 320\)"):
        check_encoder(cfg)
    cfg = load_config(None, ["model.encoder.layers=[1,2,3,5]", f"model.encoder.pretrained_path={folder}"])
    with pytest.raises(ConfigError, match=r"model\.encoder\.layers.*4 blocks"):
        check_encoder(cfg)
    cfg = load_config(None, [f"model.encoder.pretrained_path={folder}"])
    assert check_encoder(cfg).patch_size == 16


_scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e30, 2.0**63, 5e-324]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),  # control characters and NUL included
)
_values = st.one_of(
    _scalars,
    st.lists(st.integers(-5, 500), max_size=5),
    st.lists(
        st.one_of(_scalars, st.lists(_scalars, max_size=2), st.dictionaries(st.text(max_size=3), _scalars, max_size=2)),
        max_size=4,
    ),
    st.sampled_from(["bf16", "fp16", "off", "auto", "hf", "timm", "e2net", "linear", "gn", "Sm", "MAE", "[]", "{}"]),
)
_keys = st.one_of(
    st.sampled_from(VALID_KEYS),
    st.sampled_from(["train", "model.encoder", "x.y", "train.lr.x"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=20),
)


def _render(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _same(stored, given) -> bool:
    """``stored`` is ``given`` as the schema types it (OmegaConf makes 1 a "1" for a str key, "2e-4" a
    float for a float key, "yes" True for a bool key)."""
    if isinstance(given, list):
        return len(stored) == len(given) and all(map(_same, stored, given))
    if stored is None or given is None or isinstance(given, dict):
        return stored == given
    if isinstance(stored, bool):
        return str(given).lower() in ({"true", "yes", "on", "y", "1"} if stored else {"false", "no", "off", "n", "0"})
    if isinstance(stored, str):
        return stored == str(given)
    stored, given = float(stored), float(given)
    return stored == given or (math.isnan(stored) and math.isnan(given))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_keys, _values), max_size=4))
def test_random_overrides_give_clean_errors_or_valid_configs(pairs):
    overrides = [f"{k}={_render(v)}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
        check_keys(cfg)
    except ConfigError as err:
        assert str(err).startswith(("config key", "unknown config key", "override")), str(err)
        return
    # What loads survives being stored: the run folder's config.yaml and a checkpoint's dict load back the same.
    saved = OmegaConf.to_yaml(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_config(cfg, Path(tmp) / "config.yaml")
        assert OmegaConf.to_yaml(load_config(Path(tmp) / "config.yaml")) == saved
    assert OmegaConf.to_yaml(load_config(config.to_dict(cfg))) == saved
    # Every override that loaded took effect: the last value given for each key is the one stored
    # (unless a whole section was set too, which replaces what the key's own override said).
    for key, value in dict(pairs).items():
        if key in VALID_KEYS and not any(key.startswith(f"{k}.") for k, _ in pairs):
            assert _same(OmegaConf.select(cfg, key), value), (key, value, OmegaConf.select(cfg, key))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_keys, _values), min_size=1, max_size=3))
def test_hostile_overrides_through_train_py_are_exit_2_without_traceback(tiny_dinov3, pairs):
    """The same values through train.py's entry point: a clean exit 2 naming the key, or a config
    that passes (which then stops at the missing data, exit 1), never an exception escaping."""
    import contextlib
    import io
    from unittest import mock

    from engine import amp
    from helpers import run_train

    base = [
        f"model.encoder.pretrained_path={tiny_dinov3}",
        "data.image_size=32",
        "data.root=/nonexistent",
        "train.amp=off",
    ]
    # run_dir comes last (never randomised): a valid config writes only into a temporary folder.
    overrides = [f"{k}={_render(v)}" for k, v in pairs if not k.startswith("train.run_dir")]
    err = io.StringIO()
    # A drawn train.amp=auto gets a stand-in for the CPU probe: float32 wins, nothing is timed.
    probe = mock.patch.object(amp, "cpu_matmul_rates", return_value={"bf16": 1.0, "fp32": 2.0})
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(err), probe:
        rc = run_train(["--config", str(ROOT / "e2net_dinov3.yaml"), *base, *overrides, f"train.run_dir={tmp}/run"])
    assert rc in (1, 2), (rc, overrides)
    assert "Traceback" not in err.getvalue(), err.getvalue()[-2000:]
    if rc == 2:
        assert err.getvalue().startswith("error: "), err.getvalue()[-2000:]


def test_off_stays_a_string(tmp_path):
    """YAML 1.1 reads `off` as False; the loader keeps YAML 1.2 booleans (true/false) only."""
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n  deterministic: true\n")
    cfg = load_config(path)
    assert cfg.train.amp == "off" and cfg.train.deterministic is True


def test_build_model_checks_the_keys_once(tiny_dinov3_factory, monkeypatch):
    """build_model checks a config nobody checked, and not again one that build.check_config passed."""
    import build

    with pytest.raises(ConfigError, match=r"model\.encoder\.lora\.rank"):
        build.build_model(load_config(None, ["model.encoder.lora.rank=2", "model.encoder.freeze=false"]))
    cfg = load_config(None, ["train.amp=off", f"model.encoder.pretrained_path={tiny_dinov3_factory(layers=4)}"])
    build.check_config(cfg)
    monkeypatch.setattr(build, "check_keys", lambda c: pytest.fail("the keys were checked twice"))
    build.build_model(cfg)
