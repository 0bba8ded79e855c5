"""The config schema: every key, its type, default and range, and what it means.

Sections are dataclasses; a key with a fixed set of values has a StrEnum as its type; a number's range
is declared beside it with :func:`within`. :mod:`config` loads a config into this schema and checks it;
the README's "Config reference" lists the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from evaluation.names import METRIC_KEYS

# --------------------------------------------------------------------------- choices
# A key with a fixed set of values has a StrEnum as its field's type: the loader rejects any other value with the
# list of valid ones. Members compare equal to their strings; name == value, since OmegaConf matches the YAML text
# against the names (so `amp: off` works). Each value's meaning is given where the schema uses it.
Backend = StrEnum("Backend", ["hf", "timm"])
WeightsDtype = StrEnum("WeightsDtype", ["auto", "float32", "bfloat16"])
Norm = StrEnum("Norm", ["gn", "bn"])
Amp = StrEnum("Amp", ["auto", "bf16", "fp16", "off"])
Decoder = StrEnum("Decoder", ["e2net", "e2net_ref", "e2net_dinov2", "unet", "linear"])
CaemAlign = StrEnum("CaemAlign", ["own", "finest"])
CaemSE = StrEnum("CaemSE", ["outputs", "fusions"])
Pyramid = StrEnum("Pyramid", ["vitdet", "interpolate", "projected"])
PyramidSizes = StrEnum("PyramidSizes", ["patch", "image"])
AdapterPosition = StrEnum("AdapterPosition", ["after", "before"])
AdapterForm = StrEnum("AdapterForm", ["bottleneck", "mlp"])
MaskInterpolation = StrEnum("MaskInterpolation", ["bilinear", "bicubic"])
Fusion = StrEnum("Fusion", ["concat", "levels"])
Scheduler = StrEnum("Scheduler", ["cosine", "cosine_epoch", "plateau"])
LossTerm = StrEnum("LossTerm", ["bce", "iou", "dice", "edge", "sobel"])
AugmentOn = StrEnum("AugmentOn", ["workers", "device"])
ChannelOrder = StrEnum("ChannelOrder", ["rgb", "bgr"])
Init = StrEnum("Init", ["default", "published"])
SobelPeak = StrEnum("SobelPeak", ["image", "batch"])
SobelBorder = StrEnum("SobelBorder", ["replicate", "zeros"])
# What train.best_metric may pick: a metric of results.json, the validation loss, or the epoch's training loss.
BestMetric = StrEnum("BestMetric", {k: k for k in (*METRIC_KEYS, "loss", "train_loss")})


# --------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """An interval of numbers, closed unless ``open_low`` / ``open_high``; printed as ``(0, 10]``."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.low < v if self.open_low else self.low <= v
        return above and (v < self.high if self.open_high else v <= self.high)

    def __str__(self) -> str:
        low, high = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"{low}{self.low:g}, {self.high:g}{high}"


def within(default: Any, low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Any:
    """A field whose value (each item, for a list) must lie between ``low`` and ``high``. Every number has an upper
    bound: beyond it a value is a typing slip (a learning rate or loss weight of 1e308 makes every step NaN; a batch
    of 1e9 exhausts memory)."""
    meta = {"range": Range(low, high, open_low, open_high)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


WEIGHT = (0, 1e4)  # a loss weight's range


# --------------------------------------------------------------------------- schema
@dataclass
class LoRAConfig:
    """Low-rank adapters on the frozen trunk (peft), trained at train.encoder_lr_scale."""

    rank: int = within(0, 0, 4096)  # 0 = off
    alpha: float = within(16.0, 0, 1e6, open_low=True)  # the update is scaled by alpha / rank
    dropout: float = within(0.0, 0, 1, open_high=True)
    # Module names inside a block (e.g. q_proj, attn.qkv); empty = the family's attention projections.
    targets: list[str] = field(default_factory=list)


@dataclass
class AdapterConfig:
    """Bottleneck adapters after chosen blocks of the frozen trunk (encoders/adapters.py):
    tokens + s * up(GELU(down(LayerNorm(tokens)))), trained at the full train.lr."""

    # 0-based block indices (unlike `layers`), or "all" (every block up to the last tapped one); [] = off.
    blocks: Any = field(default_factory=list)
    reduction: int = within(4, 1, 4096)  # bottleneck width = max(width // reduction, 32)
    # Starting value of the learned scale s (0 would never learn).
    init_scale: float = within(1e-3, 0, 100, open_low=True)
    # after: the adapter reads the block's output and the sum goes on (E2Net-DINOv2's); before: it
    # reads the block's input and the block reads input + adapter(input) (SAM2-UNeXT's).
    position: AdapterPosition = AdapterPosition.after
    # bottleneck: the form above (LayerNorm, no biases, up at zero, learned scale s); mlp: SAM2-UNeXT's
    # Linear(bias) -> GELU -> Linear(bias) -> GELU, truncated-normal (std 0.02) weights, zero biases, no
    # scale (init_scale unused).
    form: AdapterForm = AdapterForm.bottleneck


@dataclass
class EncoderConfig:
    backend: Backend = Backend.hf  # hf: transformers AutoModel; timm
    name: str = "facebook/dinov3-vitb16-pretrain-lvd1689m"  # hub id / timm model name
    # Local folder (hf) or Meta-format .pth file (timm); tried before the hub id.
    pretrained_path: str | None = "checkpoint/dinov3-vitb16-pretrain-lvd1689m"
    # Transformer blocks to tap, counted from 1; empty = evenly spaced quarters of the depth
    # ((3, 6, 9, 12) for the 12-block ViT-S/B). Four with a pyramid; any number with simple=true.
    layers: list[int] = within([], 1, 1000)
    freeze: bool = True
    trainable_blocks: int = within(0, 0, 1000)  # fine-tune only the last k blocks (freeze must be true)
    simple: bool = False  # every tapped layer at stride p (no pyramid)
    # Strides p/4, p/2, p, 2p when simple is false: vitdet = ViTDet's learnable simple feature pyramid
    # (transposed convs up, max-pool down); interpolate = bilinear resizes, the trunk's width on every level;
    # projected = per level Linear -> LayerNorm -> GELU to widths D/4, D/2, D, D, then bilinear resizes
    # (E2Net-DINOv2's).
    pyramid: Pyramid = Pyramid.vitdet
    # Sizes of those levels: patch = 4x, 2x, 1x and 1/2 of the patch grid (148 / 74 / 37 / 19 at 518 px
    # with p = 14); image = H/4, H/8, H/16, H/32 of the image (129 / 64 / 32 / 16), every level a
    # bilinear resize of its map, as E2Net-DINOv2's pyramid (interpolate and projected only).
    pyramid_sizes: PyramidSizes = PyramidSizes.patch
    # Storage of the frozen trunk weights; auto = bfloat16 under bf16 autocast, else float32.
    weights_dtype: WeightsDtype = WeightsDtype.auto
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    # Tapped layers through the trunk's final norm (DINOv3's get_intermediate_layers(norm=True));
    # false: the raw hidden states, as the published E2Net fed them (transformers' hidden_states).
    tap_norm: bool = True
    # Colour order fed to the trunk: rgb (what DINOv3 was trained on); bgr = OpenCV's order, which the
    # published E2Net fed by mistake.
    channel_order: ChannelOrder = ChannelOrder.rgb
    # Per-channel mean and std on the 0..255 scale, in the order the trunk receives the channels
    # (after channel_order); empty = the checkpoint's own (ImageNet's for DINOv3). The published
    # E2Net's: mean [124.55, 118.90, 102.94], std [56.77, 55.97, 57.50].
    pixel_mean: list[float] = within([], 0, 255)
    pixel_std: list[float] = within([], 0, 255, open_low=True)
    # Crop each input to the largest multiple of the patch size inside the model, dropping its right
    # and bottom border, as the published patch layer did at 392 px (24 patches = 384 px); the
    # prediction is still resized to the whole input, so it is stretched by size / cropped size.
    # false: an image size that is not a multiple of the patch is an error.
    drop_border: bool = False
    # Side of the square image this encoder sees: the loaded image is resized to it on the device
    # (bilinear, antialiased); 0 = the image as loaded (data.image_size).
    image_size: int = within(0, 0, 8192)
    antialias: bool = True  # false: that resize without antialiasing (SAM2-UNeXT's F.interpolate of DINOv2's input)
    # Blocks recompute their activations (adapters and LoRA included) in the backward pass instead of
    # keeping them: a fraction of the trunk's training memory for one more forward pass of it per step.
    # Only where the trunk trains (adapters, LoRA, trainable blocks); a frozen trunk ignores it.
    activation_checkpointing: bool = False


@dataclass
class SecondEncoderConfig(EncoderConfig):
    """model.encoder2: the same keys; off (name empty) unless set."""

    name: str = ""
    pretrained_path: str | None = None


@dataclass
class TemporalConfig:
    """Attention across a clip's frames (models/temporal.py), after CAEM on the coarsest pyramid levels:
    each level's tokens of all the clip's frames attend to one another. The output projection starts at
    zero, so a clip model begins exactly as the image model it is initialised from (train.init_from)."""

    levels: int = within(0, 0, 4)  # coarsest levels that get it; 0 = off (an image model)
    heads: int = within(4, 1, 256)  # attention heads; divides model.channels


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # A second encoder (a SAM2 Hiera: sam2.1-hiera-* folders, timm sam2_hiera_*; name empty = off). The
    # fused pyramid has its four levels, with model.encoder's maps fused into them before CAEM.
    encoder2: SecondEncoderConfig = field(default_factory=SecondEncoderConfig)
    # How model.encoder's maps join encoder2's levels (each 1x1-projected to the level's width, resized to its
    # size, concatenated, 1x1 to model.channels): concat = its deepest map into every level (SAM2-UNeXT);
    # levels = its level i into level i.
    fusion: Fusion = Fusion.concat
    # e2net: ours (search -> focus -> refine at each level's own stride, deep supervision); e2net_ref: the
    # published E2Net (LFSM -> CFZM -> CCM); e2net_dinov2: E2Net-DINOv2's LFSM -> CFZM -> CCM (attention on
    # 32x32 average-pooled grids, maps resized as probabilities; models/reference_dinov2.py); unet:
    # SAM2-UNeXT's U-Net of double 3x3 conv-norm-ReLU blocks, one output, no CAEM; linear: the DINOv3
    # linear-probe baseline.
    decoder: Decoder = Decoder.e2net
    channels: int = within(128, 8, 4096)  # CAEM / decoder width, a multiple of 8
    caem_align: CaemAlign = CaemAlign.own  # own: each output at its level's stride; finest: all at the finest
    caem_reduce_norm: bool = True  # norm + ReLU after CAEM's 1x1 reductions (false: a plain conv, the reference)
    # Where CAEM's squeeze-excitation sits: outputs = on every output level (E2Net's); fusions = inside each
    # top-down fusion, so the deepest level has none (E2Net-DINOv2's).
    caem_se: CaemSE = CaemSE.outputs
    caem_out_conv: bool = False  # a 3x3 conv-norm-ReLU on every output level, after the alignment (E2Net-DINOv2's)
    norm: Norm = Norm.gn  # gn: GroupNorm, independent of the per-GPU batch size; bn: BatchNorm
    context_heads: int = within(4, 1, 256)  # heads of the decoder's attention; divides channels
    channels_last: bool = False
    compile: bool = False  # torch.compile the trainable decoder
    # Weights of CAEM and the decoder: default = PyTorch's per-layer defaults; published = the published
    # E2Net's initialize() (He normal fan-out convs, N(0, 0.01) squeeze-excitation, Xavier linear; models/init.py).
    init: Init = Init.default
    caem_se_bias: bool = True  # biases in CAEM's squeeze-excitation layers (the published E2Net's have none)
    # e2net_ref: the coarse map is returned as probabilities, which the loss reads as logits again (the
    # published E2Net's double sigmoid: its coarse terms can never call a pixel background).
    coarse_sigmoid: bool = False
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


@dataclass
class LossConfig:
    bce: float = within(1.0, *WEIGHT)  # BCE (boundary-weighted when `weighted`: SINet-V2 structure loss)
    iou: float = within(1.0, *WEIGHT)  # soft IoU (boundary-weighted when `weighted`)
    dice: float = within(0.0, *WEIGHT)
    edge: float = within(0.0, *WEIGHT)  # BCE on the mask boundary band
    sobel: float = within(0.0, *WEIGHT)  # BCE between Sobel edge maps of prediction and mask (the reference's)
    side: float = within(0.5, *WEIGHT)  # weight of each side output (deep supervision) relative to the final map
    weighted: bool = True  # SINet-V2 boundary weighting of bce and iou (up to 6x near the boundary)
    # false: BCE stays the plain mean even when `weighted`, as the widely copied structure loss computes it
    # (its reduce='none' is PyTorch's legacy flag: the BCE is averaged before the weight is applied).
    bce_weighted: bool = True
    pooled: bool = False  # dice and iou summed over the whole batch (the reference) instead of per image
    # Terms of the coarse map (the first output), each weighted `coarse`; empty = the coarse map is
    # one more side output with the final map's terms.
    coarse_terms: list[LossTerm] = field(default_factory=list)
    coarse: float = within(0.2, *WEIGHT)
    smooth: float = within(1.0, 0, 1e6)  # added to both sides of the dice and iou ratios (the published: 1e-5)
    # The sobel term's edge maps are divided by their maximum over each image, or over the whole
    # batch (the published: an image's loss then depends on its batch-mates).
    sobel_peak: SobelPeak = SobelPeak.image
    # Border of the sobel filter: replicate; zeros (the published: an object touching the frame has an edge there).
    sobel_border: SobelBorder = SobelBorder.replicate


@dataclass
class DataConfig:
    root: str = "data/COD"  # holds TrainDataset/ (or TrainValDataset/) and TestDataset/
    train: list[str] = field(default_factory=lambda: ["TrainDataset"])  # relative to root
    test_sets: list[str] = field(default_factory=list)  # scored at the end of training; test.py: empty = all
    val_fraction: float = within(0.05, 0, 1, open_high=True)  # seeded hold-out of the training images
    val_set: str = ""  # a test benchmark name used for validation instead (not a clean protocol)
    # Validate on the training transforms (random crop and flip, drawn anew each epoch), as the published
    # E2Net did; the validation then reports its loss only (the maps do not match the masks on disk).
    val_augment: bool = False
    image_size: int = within(384, 32, 8192)
    multi_scale: list[int] = within([], 32, 8192)  # e.g. [320, 384, 448], one per batch
    strict: bool = False  # bad files fail at start-up instead of being skipped
    hflip: float = within(0.5, 0, 1)  # probability
    vflip: float = within(0.0, 0, 1)  # probability of a vertical flip (SAM2-UNeXT's: 0.5)
    rotate: float = within(10.0, 0, 180)  # degrees
    scale: list[float] = within([0.75, 1.0], 0, 1, open_low=True)  # [min, max] random crop area
    color_jitter: float = within(0.2, 0, 1, open_high=True)  # brightness/contrast/saturation factors 1 +- it
    # The published E2Net's crop instead of the aspect-keeping area crop of `scale`: per axis, a total
    # cut of a whole number of pixels below this fraction of the side (uniform), split at random
    # between its two sides, so the aspect changes; 0.125 is the published value (mean cut 1/16 of
    # the side per axis); 0 = off.
    side_crop: float = within(0.0, 0, 1, open_high=True)
    # Keep the masks' grey levels (/ 255, interpolated) as training and validation targets, as the
    # published E2Net did; false: binarised at 127 after resizing. Scores always binarise the masks on disk.
    soft_masks: bool = False
    # How masks are resampled: bilinear, like the image; bicubic (OpenCV's, saturated to 0..255), for
    # SAM2-UNeXT's bicubic resize of its soft masks (PIL's, whose kernel differs: configs/sam2_unext.yaml).
    mask_interpolation: MaskInterpolation = MaskInterpolation.bilinear
    # Decode large JPEGs at 1/2, 1/4 or 1/8 size (in the DCT, several times faster) when the transform
    # needs no more pixels; false: full size, then the bilinear resize alone, as the published E2Net.
    reduced_decode: bool = True
    # workers: DataLoader processes decode and augment (OpenCV); device: decoded once into memory as uint8,
    # warped and jittered on the training device, which keeps a fast GPU fed (datasets/device_augment.py).
    augment_on: AugmentOn = AugmentOn.workers
    cache: bool = False  # decode each training image once, pre-resized to ~1.25x image_size
    cache_dir: str = ""  # where that cache lives; empty = <data.root>/.cache
    max_pixels: int = within(100_000_000, 1, 1e12)  # larger images are treated as decompression bombs
    verify: bool = False  # fully decode every file at start-up (headers and end markers are always checked)
    # Video (data.train folders of sequences, datasets/video.py): frames per training sample, centred on an
    # annotated frame; the loss reads the clip's frames that have a mask. 1 = single annotated frames.
    clip: int = within(1, 1, 64)
    clip_stride: int = within(1, 1, 1000)  # frames between two consecutive frames of a clip


@dataclass
class TrainConfig:
    epochs: int = within(100, 1, 1e6)
    batch_size: int = within(16, 1, 65536)  # per process
    lr: float = within(1e-4, 0, 10, open_low=True)
    weight_decay: float = within(0.05, 0, 10)
    decay_norms: bool = False  # weight decay on biases, norm scales and tokens too (the reference decays everything)
    # cosine: per-iteration warm-up + cosine decay; cosine_epoch: the same curve with the lr held for each
    # epoch (torch's CosineAnnealingLR stepped per epoch; warm-up in whole epochs); plateau:
    # ReduceLROnPlateau on the validation loss.
    scheduler: Scheduler = Scheduler.cosine
    plateau_factor: float = within(0.5, 0, 1, open_low=True, open_high=True)  # lr multiplier on a stall
    plateau_patience: int = within(10, 0, 1e6)  # validations without improvement before the lr drops
    warmup_epochs: float = within(2.0, 0, 1e6)
    min_lr_ratio: float = within(0.01, 0, 1)  # the lr floor (cosine end, plateau minimum) as a fraction of lr
    encoder_lr_scale: float = within(0.1, 0, 100)  # lr multiplier for fine-tuned encoder blocks and LoRA
    betas: list[float] = within([0.9, 0.999], 0, 1, open_high=True)
    grad_clip: float = within(1.0, 0, 1e12)  # max global grad norm; 0 disables
    accum_steps: int = within(1, 1, 65536)
    # auto: resolved once at start-up for the device (engine.amp.resolve_precision); bf16; fp16 (with a
    # GradScaler); off (float32).
    amp: Amp = Amp.auto
    run_dir: str = ""  # default checkpoint/<run name>
    name: str = "e2net_dinov3"
    resume: str = "auto"  # "auto" | path | "" (start fresh)
    val_interval: int = within(1, 1, 1e6)  # epochs
    # Chooses best.pth: a validation metric, `loss` (validation) or `train_loss` (the epoch's mean
    # training loss, needs no validation split); MAE and the losses are minimised.
    best_metric: BestMetric = BestMetric.Sm
    seed: int = within(42, 0, 9e18)
    num_workers: int = within(4, 0, 1024)
    log_interval: int = within(20, 1, 2e9)  # steps between TensorBoard scalars
    deterministic: bool = False
    max_nonfinite: int = within(5, 1, 2e9)  # consecutive non-finite losses that stop the run
    # Stop after this many optimizer steps (0 = no limit) without changing the LR schedule: an
    # interruption on purpose; train.resume=auto continues from that batch.
    max_steps: int = within(0, 0, 2e9)
    # Also save last.pth, with the position inside the epoch, every this many optimizer steps (0 = at
    # epoch ends only): a killed run (torchrun --max-restarts, a lost node) loses at most this many steps.
    save_every_steps: int = within(0, 0, 2e9)
    # DDP's static_graph (engine.distributed.wrap_ddp): only when every trainable parameter is used in
    # every step; refused with accum_steps > 1, whose no_sync it breaks in torch 2.14.
    ddp_static_graph: bool = False
    fused_adamw: bool = True  # on CUDA
    # Start a new run from the trained weights of a checkpoint (.pth) or an export.py --hf folder: fresh
    # optimizer and schedule, epoch 0 (not a resume). Weights the model has and the file lacks are allowed
    # only for the temporal module (an image model starting a clip model); all others must be there.
    init_from: str = ""


@dataclass
class TTAConfig:
    """Test-time augmentation in test.py (engine/tta.py): every view's probability map is averaged."""

    hflip: bool = False  # add the mirrored view of every scale
    # Input scale factors relative to data.image_size, each side rounded to the encoder's patch,
    # e.g. [0.75, 1.0, 1.25]; empty = the plain input only.
    scales: list[float] = within([], 0.25, 4)


@dataclass
class EvalConfig:
    batch_size: int = within(8, 1, 65536)  # images per forward pass in validation and test.py
    workers: int = within(0, 0, 4096)  # test.py scoring processes; 0 = all cores; same numbers for any count
    # Resize the final logits straight from the decoder's own output to each mask's size, then the
    # sigmoid (the published test path); false: probabilities at the input size, resized after. No TTA.
    resize_logits: bool = False
    floor_maps: bool = False  # 8-bit maps by truncating 255 p (the published astype(uint8)); false: rounding
    # A threshold: every final map is binarised (p > binarize -> 255, else 0) before it is written and
    # scored, in validation and test.py (E2Net-DINOv2's test script at 0.5); null = probabilities.
    binarize: float | None = within(None, 0, 1, open_low=True, open_high=True)
    tta: TTAConfig = field(default_factory=TTAConfig)  # test.py only; validation never uses it
    # Video benchmarks: score every annotated frame; false = the published MoCA-Mask protocol (SLT-Net's
    # eval/main_MoCA.m), which leaves out each sequence's last two annotated frames (CAD keeps them all).
    video_all_frames: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
