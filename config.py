"""One typed config for every entry point.

A config is the dataclass schema below, filled from YAML and then from dotted
``key=value`` overrides on the command line (``train.lr=1e-4``). Unknown keys, wrong
types and impossible values raise :class:`ConfigError` naming the key, before any model
is built. Model code never reads this object: ``build_*`` functions translate it into
explicit constructor arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from dinov3_trunks import Architecture


class ConfigError(ValueError):
    """A config key is unknown, mistyped or holds an impossible value."""


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose booleans are YAML 1.2's ``true``/``false`` only: YAML 1.1 also reads
    ``on``/``off``/``yes``/``no`` as booleans, which would turn ``train.amp=off`` into False."""


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


# --------------------------------------------------------------------------- choices
# A key with a fixed set of values has a StrEnum here and that Enum as its field's type: the
# loader rejects any other value with the list of valid ones, and nothing else checks it. Members
# compare equal to their strings and print as them; member name == value, since OmegaConf matches
# the YAML text against the names (so `train.amp=off` and `amp: off` still work).
class Backend(StrEnum):  # model.encoder.backend
    hf = "hf"  # transformers AutoModel
    timm = "timm"


class WeightsDtype(StrEnum):  # model.encoder.weights_dtype: storage of the frozen trunk weights
    auto = "auto"  # bfloat16 under bf16 autocast, else float32 (resolved in models.build_model)
    float32 = "float32"
    bfloat16 = "bfloat16"


class Norm(StrEnum):  # model.norm
    gn = "gn"  # GroupNorm: independent of the per-GPU batch size
    bn = "bn"


class Amp(StrEnum):  # train.amp
    auto = "auto"  # resolved once at start-up for the device (engine.amp.resolve_precision)
    bf16 = "bf16"
    fp16 = "fp16"  # with a GradScaler
    off = "off"  # float32


class Decoder(StrEnum):
    e2net = "e2net"  # ours: search -> focus -> refine at each level's own stride, deep supervision
    e2net_ref = "e2net_ref"  # the published E2Net: LFSM -> CFZM -> CCM
    linear = "linear"  # the DINOv3 linear-probe baseline


class CaemAlign(StrEnum):
    own = "own"  # each CAEM output keeps its level's stride
    finest = "finest"  # every CAEM output resized to the finest level's size (the reference)


class Pyramid(StrEnum):
    vitdet = "vitdet"  # learnable ViTDet simple feature pyramid (transposed convs up, max-pool down)
    interpolate = "interpolate"  # bilinear resize to strides p/4, p/2, p, 2p, trunk width on every level


class Scheduler(StrEnum):
    cosine = "cosine"  # per-iteration warm-up + cosine decay
    plateau = "plateau"  # ReduceLROnPlateau on the validation loss, stepped after each validation


class LossTerm(StrEnum):
    bce = "bce"
    iou = "iou"
    dice = "dice"
    edge = "edge"
    sobel = "sobel"


# --------------------------------------------------------------------------- schema
@dataclass
class LoRAConfig:
    """Low-rank adapters on the frozen trunk (peft), trained at train.encoder_lr_scale."""

    rank: int = 0  # 0 = off
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    # Module names inside a block (e.g. q_proj, attn.qkv); empty = the family's attention projections.
    targets: list[str] = field(default_factory=list)


@dataclass
class EncoderConfig:
    backend: Backend = Backend.hf
    name: str = "facebook/dinov3-vitb16-pretrain-lvd1689m"  # hub id / timm model name
    # Local folder (hf) or Meta-format .pth file (timm); tried before the hub id.
    pretrained_path: str | None = "checkpoint/dinov3-vitb16-pretrain-lvd1689m"
    # Transformer blocks to tap, counted from 1; empty = evenly spaced quarters of the depth
    # ((3, 6, 9, 12) for the 12-block ViT-S/B, (6, 12, 18, 24) for ViT-L).
    layers: list[int] = field(default_factory=list)
    freeze: bool = True
    trainable_blocks: int = 0  # fine-tune only the last k blocks (freeze must be true)
    simple: bool = False  # all four levels at stride 16 (no pyramid)
    pyramid: Pyramid = Pyramid.vitdet  # how the strides 4/8/16/32 are made when simple is false
    weights_dtype: WeightsDtype = WeightsDtype.auto
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: Decoder = Decoder.e2net
    channels: int = 128  # CAEM / decoder width
    caem_align: CaemAlign = CaemAlign.own
    caem_reduce_norm: bool = True  # norm + ReLU after CAEM's 1x1 reductions (false: a plain conv, the reference)
    norm: Norm = Norm.gn
    context_heads: int = 4  # heads of the decoder's attention (e2net: stride 16/32; e2net_ref: LFSM and CCM)
    channels_last: bool = False
    compile: bool = False  # torch.compile the trainable decoder


@dataclass
class LossConfig:
    bce: float = 1.0  # BCE (boundary-weighted when `weighted`: SINet-V2 structure loss, BCE half)
    iou: float = 1.0  # soft IoU (boundary-weighted when `weighted`: structure loss, IoU half)
    dice: float = 0.0
    edge: float = 0.0  # BCE on the mask boundary band
    sobel: float = 0.0  # BCE between the Sobel edge maps of prediction and mask (the reference's edge term)
    side: float = 0.5  # weight of each side output (deep supervision) relative to the final map
    weighted: bool = True  # SINet-V2 boundary weighting of bce and iou (up to 6x near the boundary)
    pooled: bool = False  # dice and iou summed over the whole batch (the reference) instead of per image
    # Terms of the coarse map (the first output), each weighted `coarse`; empty = the coarse map is
    # one more side output with the final map's terms.
    coarse_terms: list[LossTerm] = field(default_factory=list)
    coarse: float = 0.2


class AugmentOn(StrEnum):
    """Where training augmentation runs (``data.augment_on``)."""

    workers = "workers"  # DataLoader worker processes decode and augment (OpenCV)
    device = "device"  # decoded once into memory as uint8; warped and jittered on the training device


@dataclass
class DataConfig:
    root: str = "data/COD"  # holds TrainDataset/ (or TrainValDataset/) and TestDataset/
    train: list[str] = field(default_factory=lambda: ["TrainDataset"])  # relative to root
    test_sets: list[str] = field(default_factory=list)  # empty = discover under TestDataset/
    val_fraction: float = 0.05  # seeded hold-out of the training images
    val_set: str = ""  # a test benchmark name used for validation instead (not a clean protocol)
    image_size: int = 384
    multi_scale: list[int] = field(default_factory=list)  # e.g. [320, 384, 448], one per batch
    strict: bool = False  # bad files fail at start-up instead of being skipped
    hflip: float = 0.5
    rotate: float = 10.0  # degrees
    scale: list[float] = field(default_factory=lambda: [0.75, 1.0])  # random crop area range
    color_jitter: float = 0.2
    # Crop up to this fraction of each side independently (the aspect changes), instead of the
    # aspect-keeping area crop of `scale`; 0.125 is the reference's; 0 = off.
    side_crop: float = 0.0
    augment_on: AugmentOn = AugmentOn.workers  # "device" keeps a fast GPU fed (datasets/device_augment.py)
    cache: bool = False  # decode each training image once, pre-resized to ~1.25x image_size
    cache_dir: str = ""  # where that cache lives; empty = <data.root>/.cache
    max_pixels: int = 100_000_000  # larger images are treated as decompression bombs
    verify: bool = False  # fully decode every file at start-up (headers and end markers are always checked)


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 16  # per process
    lr: float = 1e-4
    weight_decay: float = 0.05
    decay_norms: bool = False  # weight decay on biases, norm scales and tokens too (the reference decays everything)
    scheduler: Scheduler = Scheduler.cosine
    plateau_factor: float = 0.5  # plateau: lr multiplier when the validation loss stalls
    plateau_patience: int = 10  # plateau: validations without improvement before the lr drops
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.01  # the lr floor (cosine end, plateau minimum) as a fraction of lr
    encoder_lr_scale: float = 0.1  # lr multiplier for fine-tuned encoder blocks
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    accum_steps: int = 1
    amp: Amp = Amp.auto
    run_dir: str = ""  # default checkpoint/<run name>
    name: str = "e2net_dinov3"
    resume: str = "auto"  # "auto" | path | "" (start fresh)
    val_interval: int = 1  # epochs
    best_metric: str = "Sm"  # a key of results.json or "loss" (validation loss); MAE and loss are minimised
    seed: int = 42
    num_workers: int = 4
    log_interval: int = 20  # steps between TensorBoard scalars
    deterministic: bool = False
    max_nonfinite: int = 5  # consecutive non-finite losses that stop the run
    # Stop after this many optimizer steps (0 = no limit) without changing the LR schedule: an
    # interruption on purpose. Inside an epoch the position is saved (no validation), and
    # train.resume=auto continues from that batch.
    max_steps: int = 0
    fused_adamw: bool = True  # on CUDA


@dataclass
class TTAConfig:
    """Test-time augmentation in test.py (engine/tta.py): every view's probability map is averaged."""

    hflip: bool = False  # add the mirrored view of every scale
    # Input scale factors relative to data.image_size, each side rounded to the encoder's patch,
    # e.g. [0.75, 1.0, 1.25]; empty = the plain input only.
    scales: list[float] = field(default_factory=list)


@dataclass
class EvalConfig:
    batch_size: int = 8  # images per forward pass in validation and test.py (at data.image_size)
    workers: int = 0  # test.py scoring processes (PySODMetrics per map); 0 = all cores; same numbers for any count
    tta: TTAConfig = field(default_factory=TTAConfig)  # test.py only; validation never uses it


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- loading
def _valid_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _valid_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _check_keys(tree: Any, schema: type, prefix: str = "") -> None:
    """Reject keys the schema does not have, listing the valid ones."""
    if not isinstance(tree, dict):
        where = prefix.rstrip(".") or "the config file"
        raise ConfigError(
            f"config key '{where}' is a section, not a value (got {tree!r}); "
            f"set its keys instead, e.g. {_valid_keys(schema, prefix)[0]}=..."
        )
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in tree.items():
        if key not in fields:
            where = prefix.rstrip(".") or "the top level"
            valid = ", ".join(_valid_keys(schema, prefix))
            raise ConfigError(f"unknown config key '{prefix}{key}' in {where}; valid keys: {valid}")
        f = fields[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            _check_keys(value, type(default), f"{prefix}{key}.")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is set to a value, not a section")
    node[leaf] = value


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
            raise ConfigError(f"override '{item}': cannot parse the value ({err})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def load_config(path: str | Path | dict | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Schema defaults <- YAML file (or a dict, e.g. the one stored in a checkpoint) <- overrides."""
    cfg = OmegaConf.structured(Config)
    layers = []
    if path is not None:
        if isinstance(path, dict):
            tree = path
        else:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file '{p}' not found (try --config e2net_dinov3.yaml)")
            try:
                tree = _load_yaml(p.read_text()) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"config file '{p}' is not valid YAML: {err}") from None
        layers.append(tree)
    layers.append(parse_overrides(overrides or []))
    for tree in layers:
        _check_keys(tree, Config)
        try:
            cfg = OmegaConf.merge(cfg, tree)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            raise ConfigError(f"config key '{key}': {_first_line(err)}") from None
    validate(cfg)
    return cfg


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


# Values beyond these are typing slips, not settings: each would overflow, exhaust memory or make
# every step NaN (e.g. a learning rate or loss weight of 1e308).
LIMITS = {
    "model.channels": 4096,
    "model.context_heads": 256,
    "model.encoder.trainable_blocks": 1000,
    "loss.bce": 1e4,
    "loss.iou": 1e4,
    "loss.dice": 1e4,
    "loss.edge": 1e4,
    "loss.side": 1e4,
    "loss.sobel": 1e4,
    "loss.coarse": 1e4,
    "data.image_size": 8192,
    "data.max_pixels": 2**40,
    "train.epochs": 10**6,
    "train.batch_size": 2**16,
    "train.lr": 10.0,
    "train.weight_decay": 10.0,
    "train.warmup_epochs": 10**6,
    "train.encoder_lr_scale": 100.0,
    "train.plateau_patience": 10**6,
    "train.grad_clip": 1e12,
    "train.accum_steps": 2**16,
    "train.seed": 2**63 - 1,
    "train.num_workers": 1024,
    "train.log_interval": 2**31,
    "train.max_nonfinite": 2**31,
    "train.max_steps": 2**31,
    "train.val_interval": 10**6,
    "eval.batch_size": 2**16,
    "eval.workers": 4096,
}


def _check_leaves(node: Any, key: str = "") -> None:
    """Every value is a scalar or a flat list of scalars; numbers finite and within :data:`LIMITS`;
    strings free of control characters (a NUL cannot be in a path, a newline breaks the logs)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_leaves(v, f"{key}.{k}" if key else str(k))
        return
    items = node if isinstance(node, list) else [node]
    for v in items:
        _require(
            not isinstance(v, (list, dict)), key, f"{v!r} is a nested container; give a flat list, e.g. [320, 384]"
        )
        if isinstance(v, float):
            _require(math.isfinite(v), key, f"{v} is not a finite number")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and key in LIMITS:
            limit = LIMITS[key]
            _require(
                abs(v) <= limit,
                key,
                f"{v} is out of range (at most {limit:g})"
                if isinstance(limit, float)
                else f"{v} is out of range (at most {limit})",
            )
        if isinstance(v, str):
            bad = next((c for c in v if ord(c) < 32 or ord(c) == 127), None)
            _require(bad is None, key, f"contains the control character {bad!r}; remove it")


def validate(cfg: DictConfig) -> None:
    """Impossible values, caught before anything is built."""
    _check_leaves(OmegaConf.to_container(cfg, resolve=True))
    m, d, t, lo = cfg.model, cfg.data, cfg.train, cfg.loss
    _require(all(i >= 1 for i in m.encoder.layers), "model.encoder.layers", "blocks are counted from 1")
    _require(len(m.encoder.layers) in (0, 4), "model.encoder.layers", "give four block indices (or [] for the default)")
    _require(m.encoder.trainable_blocks >= 0, "model.encoder.trainable_blocks", "must be >= 0")
    _require(
        m.encoder.freeze or m.encoder.trainable_blocks == 0,
        "model.encoder.trainable_blocks",
        "applies to a frozen encoder (model.encoder.freeze=true); freeze=false already trains every block",
    )
    lora = m.encoder.lora
    _require(lora.rank >= 0, "model.encoder.lora.rank", "must be >= 0 (0 = no LoRA)")
    _require(math.isfinite(lora.alpha) and lora.alpha > 0, "model.encoder.lora.alpha", "must be > 0")
    _require(0 <= lora.dropout < 1, "model.encoder.lora.dropout", "must be in [0, 1)")
    _require(
        lora.rank == 0 or (m.encoder.freeze and m.encoder.trainable_blocks == 0),
        "model.encoder.lora.rank",
        "LoRA adapts a frozen trunk: set model.encoder.freeze=true and model.encoder.trainable_blocks=0",
    )
    _require(m.channels >= 8 and m.channels % 8 == 0, "model.channels", "must be a positive multiple of 8")
    _require(
        m.context_heads >= 1 and m.channels % m.context_heads == 0,
        "model.context_heads",
        "must be >= 1 and divide model.channels",
    )
    for name in (*LossTerm, "side", "coarse"):
        v = lo[name]
        _require(math.isfinite(v) and v >= 0, f"loss.{name}", "must be a finite weight >= 0")
    _require(sum(lo[name] for name in LossTerm) > 0, "loss", "at least one loss weight must be > 0")
    _require(len(set(lo.coarse_terms)) == len(lo.coarse_terms), "loss.coarse_terms", "lists a term twice")
    _require(d.image_size >= 32, "data.image_size", "must be >= 32")
    _require(
        all(32 <= s <= LIMITS["data.image_size"] for s in d.multi_scale), "data.multi_scale", "sizes must be >= 32"
    )
    _require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    _require(0.0 <= d.hflip <= 1.0, "data.hflip", "is a probability in [0, 1]")
    _require(d.rotate >= 0, "data.rotate", "must be >= 0 degrees")
    _require(
        len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1,
        "data.scale",
        "must be [min, max] with 0 < min <= max <= 1",
    )
    _require(0 <= d.color_jitter < 1, "data.color_jitter", "must be in [0, 1) (factors 1 +- color_jitter)")
    _require(d.rotate <= 180, "data.rotate", "must be <= 180 degrees")
    _require(0 <= d.side_crop < 0.5, "data.side_crop", "is a fraction of each side in [0, 0.5)")
    _require(d.max_pixels > 0, "data.max_pixels", "must be > 0")
    _require(len(d.train) > 0, "data.train", "list at least one training folder (relative to data.root)")
    _require(t.epochs >= 1, "train.epochs", "must be >= 1")
    _require(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _require(math.isfinite(t.lr) and t.lr > 0, "train.lr", "must be a finite number > 0")
    _require(math.isfinite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _require(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    _require(t.seed >= 0, "train.seed", "must be >= 0")
    _require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
    _require(t.encoder_lr_scale >= 0, "train.encoder_lr_scale", "must be >= 0")
    _require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", "two values in [0, 1)")
    _require(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
    _require(t.accum_steps >= 1, "train.accum_steps", "must be >= 1")
    _require(t.val_interval >= 1, "train.val_interval", "must be >= 1")
    _require(
        t.best_metric in BEST_METRIC_KEYS,
        "train.best_metric",
        f"'{t.best_metric}' is not one of {', '.join(BEST_METRIC_KEYS)}",
    )
    _require(0 < t.plateau_factor < 1, "train.plateau_factor", "must be in (0, 1)")
    _require(t.plateau_patience >= 0, "train.plateau_patience", "must be >= 0")
    _require(t.num_workers >= 0, "train.num_workers", "must be >= 0")
    _require(t.log_interval >= 1, "train.log_interval", "must be >= 1")
    _require(t.max_nonfinite >= 1, "train.max_nonfinite", "must be >= 1")
    _require(t.max_steps >= 0, "train.max_steps", "must be >= 0")
    _require(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _require(cfg.eval.workers >= 0, "eval.workers", "must be >= 0")
    _require(
        all(math.isfinite(f) and 0.25 <= f <= 4 for f in cfg.eval.tta.scales),
        "eval.tta.scales",
        "factors of data.image_size must be in [0.25, 4], e.g. [0.75, 1.0, 1.25]",
    )
    _check_combinations(cfg)


def _check_combinations(cfg: DictConfig) -> None:
    """Options that are valid alone but cannot work together."""
    m, d, t, lo = cfg.model, cfg.data, cfg.train, cfg.loss
    levels = len(m.encoder.layers) or 4  # the encoder gives one map per tapped block
    _require(
        m.decoder != Decoder.e2net_ref or levels >= 2,
        "model.decoder",
        f"e2net_ref needs at least 2 levels (the finest as CCM query, the deepest for LFSM), "
        f"model.encoder.layers gives {levels}",
    )
    _require(
        m.decoder != Decoder.e2net or levels == 4,
        "model.decoder",
        f"e2net wires exactly 4 levels (strides 4/8/16/32), model.encoder.layers gives {levels}",
    )
    _require(
        m.decoder != Decoder.linear or m.caem_align == CaemAlign.own,
        "model.caem_align",
        "applies to the decoders with a CAEM (model.decoder=e2net or e2net_ref), not linear",
    )
    _require(
        not (m.encoder.simple and m.encoder.pyramid != Pyramid.vitdet),
        "model.encoder.pyramid",
        f"'{m.encoder.pyramid}' has no effect with model.encoder.simple=true (all levels at stride 16): "
        "set simple=false or leave pyramid at vitdet",
    )
    _require(
        not (lo.coarse_terms and m.decoder == Decoder.linear),
        "loss.coarse_terms",
        "model.decoder=linear has no coarse map: leave loss.coarse_terms empty",
    )
    has_val = d.val_fraction > 0 or bool(d.val_set)
    _require(
        t.scheduler != Scheduler.plateau or has_val,
        "train.scheduler",
        "plateau steps on the validation loss, but there is no validation split: "
        "set data.val_fraction > 0 (or data.val_set), or use train.scheduler=cosine",
    )
    _require(
        t.scheduler != Scheduler.plateau or t.warmup_epochs == 0,
        "train.warmup_epochs",
        "warm-up belongs to train.scheduler=cosine; set it to 0 with plateau",
    )


# The keys of results.json, in the papers' column order.
METRIC_KEYS = ("Sm", "wFm", "MAE", "Em_adp", "Em_mean", "Em_max", "Fm_adp", "Fm_mean", "Fm_max")
# What train.best_metric may pick: a metric, or the validation loss.
BEST_METRIC_KEYS = (*METRIC_KEYS, "loss")


def check_encoder(cfg: DictConfig) -> Architecture:
    """Read the encoder's architecture once (its config.json, or timm's model on the meta device)
    and check ``cfg`` against it: image sizes tile into whole patches, tapped and fine-tuned blocks
    exist. Returns the ``dinov3_trunks.Architecture``; raises :class:`ConfigError`."""
    from dinov3_trunks import nearest_sizes, read_architecture

    enc = cfg.model.encoder
    arch = read_architecture(enc.name, enc.pretrained_path, enc.backend)
    p = arch.patch_size
    for key, sizes in (("data.image_size", [cfg.data.image_size]), ("data.multi_scale", list(cfg.data.multi_scale))):
        for s in sizes:
            _require(
                s % p == 0,
                key,
                f"{s} is not a multiple of the encoder's patch size {p} "
                f"(try {' or '.join(map(str, nearest_sizes(s, p)))})",
            )
    _require(
        all(i <= arch.depth for i in enc.layers),
        "model.encoder.layers",
        f"{list(enc.layers)} goes beyond the encoder's {arch.depth} blocks (counted from 1; [] taps the default)",
    )
    _require(
        enc.trainable_blocks <= arch.depth,
        "model.encoder.trainable_blocks",
        f"{enc.trainable_blocks} is more than the encoder's {arch.depth} blocks",
    )
    return arch


def to_dict(cfg: DictConfig) -> dict:
    """Plain containers (choices as strings): what a checkpoint stores and ``weights_only`` reads back."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg))
