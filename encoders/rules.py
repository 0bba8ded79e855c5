"""The rules an encoder's settings obey, each written once, on plain values.

:class:`~dinov3_encoder.PyramidEncoder` calls them on its arguments, the config layer
(:mod:`config_checks`, :mod:`encoders.checks`) on an encoder section before anything is built. A
broken rule raises :class:`SettingError`, a ValueError naming the setting to change; the config layer
reports it as one line naming the key (``config key 'model.encoder2.lora.rank': ...``).
"""

from __future__ import annotations

from collections.abc import Sequence

from encoders.trunks import Family


class SettingError(ValueError):
    """A broken rule of one encoder's settings.

    ``field`` is the setting to change, named inside an encoder section (``lora.rank``,
    ``adapter.blocks``). ``why`` names other settings as ``{k}freeze`` and Booleans as ``{true}`` /
    ``{false}``: ``str()`` spells them as the encoder's keyword arguments (``freeze=True``), for code
    that builds an encoder directly; :meth:`config_message` as a section's keys
    (``model.encoder.freeze=true``).
    """

    def __init__(self, field: str, why: str) -> None:
        self.field, self.why = field, why
        super().__init__(f"{field}: {_spell(why, '', 'True', 'False')}")

    def config_message(self, section: str) -> str:
        """The line the config layer reports for the encoder section ``section`` (``model.encoder``)."""
        return f"config key '{section}.{self.field}': {_spell(self.why, section + '.', 'true', 'false')}"


def _spell(why: str, prefix: str, true: str, false: str) -> str:
    return why.replace("{k}", prefix).replace("{true}", true).replace("{false}", false)


def check_taps(layers: Sequence[int], simple: bool) -> None:
    """A pyramid (``simple=False``) is built from four tapped blocks; empty ``layers`` tap the default four."""
    if layers and len(layers) != 4 and not simple:
        raise SettingError("layers", "a pyramid ({k}simple={false}) is built from four tapped blocks; give four or []")


def check_training(freeze: bool, trainable_blocks: int, lora_rank: int, adapter_blocks: Sequence[int] | str) -> None:
    """What trains: ``trainable_blocks`` fine-tunes the last blocks of a frozen trunk (``freeze=False``
    trains them all); LoRA (``lora_rank > 0``) and adapters (any ``adapter_blocks``) go on a frozen
    trunk with no fine-tuned blocks."""
    if trainable_blocks and not freeze:
        raise SettingError(
            "trainable_blocks",
            "applies to a frozen encoder ({k}freeze={true}); freeze={false} already trains every block",
        )
    frozen = freeze and not trainable_blocks
    if lora_rank > 0 and not frozen:
        raise SettingError("lora.rank", "LoRA adapts a frozen trunk: set {k}freeze={true} and {k}trainable_blocks=0")
    if adapter_blocks and not frozen:
        raise SettingError(
            "adapter.blocks", "adapters go on a frozen trunk: set {k}freeze={true} and {k}trainable_blocks=0"
        )


def check_depth(
    depth: int, layers: Sequence[int], freeze: bool, trainable_blocks: int, default: Sequence[int] = ()
) -> None:
    """The tapped ``layers`` (counted from 1) and the ``trainable_blocks`` exist in a trunk of ``depth``
    blocks, and every block that trains feeds a tap; ``default``, the layers an empty list taps, is
    shown as an example."""
    if not all(1 <= i <= depth for i in layers):
        example = f": {list(default)}" if default else ""
        raise SettingError(
            "layers",
            f"{list(layers)}: give block indices in 1..{depth}: the encoder's {depth} blocks count from 1 "
            f"([] taps the default{example})",
        )
    if not 0 <= trainable_blocks <= depth:
        raise SettingError("trainable_blocks", f"{trainable_blocks} must be between 0 and the encoder's {depth} blocks")
    if (not freeze or trainable_blocks) and layers and max(layers) < depth:
        # Trained but unused blocks would get no gradient, which DistributedDataParallel rejects.
        raise SettingError(
            "layers",
            f"blocks {max(layers) + 1}..{depth} would train but come after the last tapped layer {max(layers)}: "
            f"tap block {depth} last, or keep the encoder frozen",
        )


def check_adapter_family(family: Family, adapter_blocks: Sequence[int] | str) -> None:
    """Adapters act on tokens: a ConvNeXt's stages hold maps, so it takes none."""
    if adapter_blocks and family == Family.dinov3_convnext:
        raise SettingError(
            "adapter.blocks",
            "adapters act on a ViT's tokens; a dinov3_convnext trunk has none (its stages hold maps): "
            "set {k}adapter.blocks=[]",
        )


def nearest_sizes(size: int, patch: int) -> list[int]:
    """The multiples of ``patch`` nearest to ``size``, nearest first (never below one patch)."""
    low, high = max(patch, size // patch * patch), max(patch, -(-size // patch) * patch)
    return sorted({low, high}, key=lambda s: (abs(s - size), s))


def check_tiles(size: int | Sequence[int], patch: int, whose: str = "the encoder's", what: str = "") -> None:
    """An image side ``size`` (or its [H, W]) tiles into whole patches; ValueError naming the nearest
    sizes that do, after ``what`` (the thing measured, e.g. ``"input size"``)."""
    sides = [size] if isinstance(size, int) else list(size)
    if all(s % patch == 0 for s in sides):
        return
    nearest = [nearest_sizes(s, patch) for s in sides]
    fits = " or ".join(map(str, nearest[0])) if len(sides) == 1 else "x".join(str(n[0]) for n in nearest)
    shown = "x".join(map(str, sides))
    raise ValueError(
        f"{what + ' ' if what else ''}{shown} is not a multiple of {whose} patch size {patch} (try {fits})"
    )
