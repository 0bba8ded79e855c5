"""Reading prediction maps and masks the way the reference scripts do, and saying what was odd.

The reference convention is ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``: colour maps become
grey (libpng / libjpeg conversion), 16-bit maps keep their high byte. A 16-bit file whose
values stay within 0..255 is read as those values instead (the high byte would make it all
black; :func:`cod_benchmarks.mask_levels`). Maps that need such a conversion, or that do not
have the mask's size (then resized bilinearly, as a model's probability map would be), are
reported by file name so that a user scoring someone else's maps learns what the files
actually held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cod_benchmarks import CAMOUFLAGED_MARK, mask_levels


@dataclass
class MapIssues:
    """Problems found in one benchmark's files, each a list of file names."""

    missing: list[str] = field(default_factory=list)  # masks with no map (not scored)
    extra: list[str] = field(default_factory=list)  # maps with no mask (ignored)
    unreadable: list[str] = field(default_factory=list)  # map or mask files that do not decode (not scored)
    colour: list[str] = field(default_factory=list)  # 3/4-channel maps, read as grey
    high_depth: list[str] = field(default_factory=list)  # 16-bit maps (see mask_levels)
    too_small: list[str] = field(default_factory=list)  # masks below MIN_SIDE (not scored)
    unscorable: list[str] = field(default_factory=list)  # "name (why)": the metrics are not finite (not scored)
    resized: list[str] = field(default_factory=list)  # "name (HxW -> HxW)"
    excluded: list[str] = field(default_factory=list)  # COD10K non-camouflaged masks (not the benchmark)
    no_photo: list[str] = field(default_factory=list)  # masks whose photo is missing or unreadable (no CCM)

    def merge(self, other: MapIssues) -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))

    def messages(self, limit: int = 10) -> list[str]:
        """One line per kind of problem, naming up to ``limit`` files."""
        what = {
            "missing": "masks have no prediction map (not scored; n_images is lower)",
            "extra": "maps have no mask (ignored)",
            "unreadable": "files could not be read as images (not scored)",
            "colour": "maps are colour images (read as greyscale, like cv2.IMREAD_GRAYSCALE)",
            "high_depth": "maps are 16-bit (values above 255: high byte kept, like cv2.IMREAD_GRAYSCALE)",
            "too_small": "masks are too small to score (not scored)",
            "unscorable": "images give metrics that are not finite numbers in [0, 1] (not scored)",
            "resized": "maps differ in size from their masks (resized bilinearly to the mask size)",
            "excluded": f"COD10K files are not camouflaged images (no '{CAMOUFLAGED_MARK}' in the name): "
            "they are not part of the COD10K benchmark and are not scored",
            "no_photo": "masks have no readable photo, which the CCM reads (CCM not reported for the benchmark)",
        }
        lines = []
        for key, text in what.items():
            names = getattr(self, key)
            if names:
                shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
                lines.append(f"{len(names)} {text}: {shown}")
        return lines

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in self.__dataclass_fields__}


def read_mask(path: Path) -> np.ndarray | None:
    """uint8 [H, W] mask (binarised later by the metrics at > 128), or None if unreadable.

    16-bit masks are read by their own range (0/255 and 0/65535 alike), see
    :func:`cod_benchmarks.mask_levels`."""
    raw = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if raw is None or raw.size == 0:
        return None
    try:
        return mask_levels(raw)
    except ValueError:
        return None


def read_photo(path: Path, size: tuple[int, int], issues: MapIssues) -> np.ndarray | None:
    """The photo as uint8 RGB [H, W, 3] at the mask's ``size`` (H, W) (bilinear where it differs,
    like a map; noted in ``issues.resized``), or None if unreadable."""
    raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if raw is None or raw.size == 0:
        return None
    if raw.shape[:2] != tuple(size):
        issues.resized.append(f"{path.name} ({raw.shape[0]}x{raw.shape[1]} -> {size[0]}x{size[1]})")
        raw = cv2.resize(raw, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)


def read_map(path: Path, size: tuple[int, int], issues: MapIssues) -> np.ndarray | None:
    """uint8 [H, W] prediction map at ``size`` = (H, W), or None if unreadable.

    Greyscale files are decoded once (16-bit ones by :func:`cod_benchmarks.mask_levels`);
    colour files are reported in ``issues`` and decoded again with the reference flag so the
    grey values are the reference ones.
    """
    name = Path(path).name
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        issues.unreadable.append(name)
        return None
    if raw.ndim == 2 and raw.dtype in (np.uint8, np.uint16):
        if raw.dtype != np.uint8:
            issues.high_depth.append(name)
        pred = mask_levels(raw)
    else:
        if raw.ndim == 3:
            issues.colour.append(name)
        if raw.dtype != np.uint8:
            issues.high_depth.append(name)
        pred = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if pred is None:
            issues.unreadable.append(name)
            return None
    if pred.shape != tuple(size):
        issues.resized.append(f"{name} ({pred.shape[0]}x{pred.shape[1]} -> {size[0]}x{size[1]})")
        pred = cv2.resize(pred, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return pred
