"""One typed config for every entry point: loading and checking it (the keys: :mod:`config_schema`).

A config is the dataclass schema of :mod:`config_schema`, filled from YAML and then from dotted ``key=value`` overrides on the command
line (``train.lr=1e-4``). Unknown keys and wrong types are OmegaConf's errors, values outside a field's range (declared
beside the field with :func:`within`) ours; both raise :class:`ConfigError` naming the key. Keys that contradict each
other are checked by :mod:`config_checks`, and what only the encoder's checkpoint can tell (patch size, depth) by
:mod:`encoders.checks`; ``build.check_config`` runs both before anything is built. Model code never reads this object:
``build.py`` translates it into explicit constructor arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

# The schema, re-exported: callers import the sections and choices from `config`.
from config_schema import (  # noqa: F401
    WEIGHT,
    AdapterConfig,
    AdapterForm,
    AdapterPosition,
    Amp,
    AugmentOn,
    Backend,
    BestMetric,
    CaemAlign,
    CaemSE,
    ChannelOrder,
    Config,
    DataConfig,
    Decoder,
    EncoderConfig,
    EvalConfig,
    Fusion,
    Init,
    LoRAConfig,
    LossConfig,
    LossTerm,
    MaskInterpolation,
    ModelConfig,
    Norm,
    Pyramid,
    PyramidSizes,
    Range,
    Scheduler,
    SecondEncoderConfig,
    SobelBorder,
    SobelPeak,
    TemporalConfig,
    TrainConfig,
    TTAConfig,
    WeightsDtype,
    within,
)


class ConfigError(ValueError):
    """A config key is unknown, mistyped or holds an impossible value."""


# --------------------------------------------------------------------------- loading
class _Yaml12Loader(yaml.SafeLoader):
    """Booleans are YAML 1.2's true/false only (YAML 1.1 would turn ``train.amp=off`` into False)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except RecursionError:  # the loader recurses once per nesting level: report it as the YAML error it is
        raise yaml.YAMLError("nested too deeply to be read (more levels than Python's recursion limit)") from None


def _check_shape(tree: Any, schema: Any, key: str = "") -> None:
    """What merging ``tree`` into the schema would hide or crash on (unknown keys are OmegaConf's to report): a
    section set to a value, a value holding containers, a switch set to anything but true or false (OmegaConf
    reads 2 and "yes" as true)."""
    if OmegaConf.is_dict(schema):
        if not isinstance(tree, dict):
            keys = ", ".join(f"{key}.{k}".lstrip(".") for k in schema)
            raise ConfigError(
                f"config key '{key or 'the config file'}' is a section, not a value (got {tree!r}); "
                f"set its keys instead (valid keys: {keys})"
            )
        for k, v in tree.items():
            if k in schema:
                _check_shape(v, schema[k], f"{key}.{k}".lstrip("."))
    elif isinstance(tree, dict) or isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        raise ConfigError(f"config key '{key}': {tree!r} is a nested container; give a value or a flat list")
    elif isinstance(schema, bool) and not isinstance(tree, bool):
        raise ConfigError(f"config key '{key}': {tree!r} is not true or false")


def _check_values(node: DictConfig, prefix: str = "") -> None:
    """Numbers finite and in their field's range; strings free of control characters (a NUL cannot be in a path,
    a newline breaks the logs)."""
    for f in dataclasses.fields(OmegaConf.get_type(node)):
        key, value = prefix + f.name, node[f.name]
        if OmegaConf.is_dict(value):
            _check_values(value, key + ".")
            continue
        for v in value if OmegaConf.is_list(value) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key '{key}': {v} is not a finite number")
            if (bounds := f.metadata.get("range")) and v is not None and v not in bounds:
                raise ConfigError(f"config key '{key}': {v} is out of range (must be in {bounds})")
            if isinstance(v, str) and (bad := re.search(r"[\x00-\x1f\x7f]", v)):
                raise ConfigError(f"config key '{key}': contains the control character {bad.group()!r}; remove it")


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "data.multi_scale=[320,384]"]`` -> nested dict (YAML-typed values)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = _load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item[:80]}': cannot parse the value ({first_line(err)})") from None
        *parents, leaf = key.strip().split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}': '{part}' is set to a value, not a section")
        node[leaf] = value
    return tree


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found (try --config e2net_dinov3.yaml)")
    try:
        return _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None


def load_config(path: str | Path | dict | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults <- YAML file (or a dict, e.g. the one stored in a checkpoint) <- overrides."""
    schema = cfg = OmegaConf.structured(Config)
    layers = [] if path is None else [path if isinstance(path, dict) else _read_file(Path(path))]
    try:
        for tree in [*layers, parse_overrides(overrides or [])]:
            _check_shape(tree, schema)
            cfg = OmegaConf.merge(cfg, tree)
        _check_values(cfg)
    except ConfigKeyError as err:  # OmegaConf's message (with the closest key, if one is close) and the valid keys
        prefix = err.full_key.removesuffix(str(err.key))
        valid = ", ".join(prefix + f.name for f in dataclasses.fields(err.object_type))
        raise ConfigError(f"unknown config key '{err.full_key}': {first_line(err)} (valid keys: {valid})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"config key '{err.full_key or '?'}': {first_line(err)}") from None
    return cfg


def resolved_amp(amp: str) -> Amp:
    """``train.amp`` once it has been resolved for the device (bf16, fp16 or off); ``auto`` is a request
    that ``engine.amp.resolve_precision`` answers at start-up, and nothing may read it before."""
    if Amp(amp) == Amp.auto:
        raise ValueError("train.amp=auto must be resolved for the device first (engine.amp.resolve_precision)")
    return Amp(amp)


def first_line(err: BaseException, with_type: bool = False) -> str:
    """What a one-line error report quotes of ``err``: its message's first line; the type's name when
    there is no message. ``with_type`` is for libraries' messages that do not say what failed and run
    to paragraphs (torch's loaders, safetensors): the type first, then the first sentence, at most 200
    characters."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    if with_type:
        line = line.split(". ")[0][:200]
    if not line and isinstance(err, EOFError):
        line = "the file ends too early"
    if not line:
        return type(err).__name__
    return f"{type(err).__name__}: {line}" if with_type else line


def to_dict(cfg: DictConfig) -> dict:
    """Plain containers (choices as strings): what a checkpoint stores and ``weights_only`` reads back."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg))
