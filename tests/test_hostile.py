"""Hostile and broken input through the real entry points: checkpoints that are truncated, corrupt or built
to run code (test.py --ckpt, train.resume), bad images, impossible configs, CLI misuse. Every failure must
be one line that names what is wrong, never a traceback, and nothing may execute or be built first."""

from __future__ import annotations

import pickle
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from build import build_model
from engine.checkpoint import save_checkpoint
from helpers import ROOT, load_test_cli, run_train


@pytest.fixture(scope="module")
def cli():
    return load_test_cli("e2net_test_cli_hostile")


@pytest.fixture(scope="module")
def train_args(tiny_dinov3) -> list[str]:
    return _train_args(tiny_dinov3)


def _train_args(tiny_dinov3: Path) -> list[str]:
    """A config train.py accepts; nothing here may get as far as reading data."""
    return [
        "--config",
        str(ROOT / "e2net_dinov3.yaml"),
        f"model.encoder.pretrained_path={tiny_dinov3}",
        "model.channels=16",
        "model.context_heads=2",
        "data.root=/nonexistent",
        "data.image_size=32",
        "train.num_workers=0",
        "train.amp=off",
    ]


@pytest.fixture()
def nothing_built(monkeypatch):
    """Fail the test if a run gets as far as building data or a model."""
    import datasets
    import train

    def built(*args, **kwargs):
        raise AssertionError("built before the input was checked")

    for module, name in ((train, "build_model"), (datasets, "build_train_val"), (datasets, "build_test_sets")):
        monkeypatch.setattr(module, name, built)


def _one_error_line(text: str, *must_contain: str) -> str:
    """The one error line of a failed command's stderr (progress bars and warnings may surround it)."""
    errors = [line for line in text.splitlines() if "error:" in line or " ERROR " in line]
    assert "Traceback" not in text and len(errors) == 1, text[-3000:]
    for part in must_contain:
        assert part in errors[0], (part, errors[0])
    return errors[0]


# --------------------------------------------------------------------------- broken checkpoints
def _good_checkpoint(path: Path) -> bytes:
    state = {
        "model": {"decoder.weight": torch.linspace(0, 1, 50_000)},
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {},
        "scaler": {},
        "epoch": 1,
        "step": 2,
        "best": None,
        "config": {},
        "versions": {},
    }
    save_checkpoint(path, state)
    return path.read_bytes()


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


BREAKAGES = {
    "truncated to half": lambda d: d[: len(d) // 2],
    "truncated by 1 byte": lambda d: d[:-1],
    "one bit flipped in the weights": lambda d: _flip(d, len(d) // 2),
    "one bit flipped in the header": lambda d: _flip(d, 40),
    "zero bytes": lambda d: b"",
    "random bytes": lambda d: np.random.default_rng(0).bytes(len(d)),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_checkpoint_is_one_line_naming_the_file(tmp_path, cli, train_args, nothing_built, capsys, breakage):
    bad = tmp_path / "weights" / "last.pth"
    bad.parent.mkdir()
    bad.write_bytes(BREAKAGES[breakage](_good_checkpoint(tmp_path / "good.pth")))

    assert cli.main(["--ckpt", str(bad), "--workers", "1"]) == 1
    _one_error_line(capsys.readouterr().err, "test.py: error:", f"'{bad}'")

    assert run_train([*train_args, f"train.resume={bad}", f"train.run_dir={tmp_path / 'run'}"]) == 1
    _one_error_line(capsys.readouterr().err, "ERROR", f"'{bad}'")


def background_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """`python train.py` resuming from a truncated checkpoint, in the session's background launches."""
    if "test_train_cli_error_has_no_traceback_in_a_real_process" not in tests:
        return {}
    bad = folder / "truncated" / "last.pth"
    bad.parent.mkdir()
    bad.write_bytes(_good_checkpoint(folder / "truncated" / "good.pth")[:1000])
    args = _train_args(request.getfixturevalue("tiny_dinov3"))
    argv = [sys.executable, "train.py", *args, f"train.resume={bad}", f"train.run_dir={folder / 'truncated' / 'run'}"]
    return {"train_cli_error": shlex.join(argv)}


def test_train_cli_error_has_no_traceback_in_a_real_process(background):
    """The same through `python train.py` (what a user sees, exit status included)."""
    (code,), printed = background.result("train_cli_error")
    assert code == 1, printed[-3000:]
    _one_error_line(printed, "truncated or corrupt", f"'{background.folder / 'truncated' / 'last.pth'}'")


# --------------------------------------------------------------------------- checkpoints that run code
class _Exploit:
    """Unpickling this runs ``code``, the way a hostile .pth does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _hostile(path: Path, marker: Path, fmt: str) -> None:
    exploit = _Exploit(f"open({str(marker)!r}, 'w').write('code ran')")
    payload = {
        "model": {"w": torch.ones(2)},
        "config": {},
        "epoch": 1,
        "step": 1,
        "optimizer": exploit,
        "scheduler": {},
        "scaler": {},
    }
    if fmt == "torch zip":
        torch.save(payload, path)
        torch.load(path, weights_only=False)  # proof that the file is live: trusting it runs the code
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
        pickle.loads(path.read_bytes())
    assert marker.read_text() == "code ran"
    marker.unlink()


@pytest.mark.parametrize("fmt", ["torch zip", "legacy pickle"])
def test_checkpoint_built_to_run_code_is_refused(tmp_path, cli, train_args, nothing_built, capsys, fmt):
    marker, evil = tmp_path / "code_ran", tmp_path / "evil.pth"
    _hostile(evil, marker, fmt)

    assert cli.main(["--ckpt", str(evil), "--workers", "1"]) == 1
    _one_error_line(capsys.readouterr().err, "refusing to load", f"'{evil}'")
    assert not marker.exists()

    assert run_train([*train_args, f"train.resume={evil}", f"train.run_dir={tmp_path / 'run'}"]) == 1
    _one_error_line(capsys.readouterr().err, "refusing to load", f"'{evil}'")
    assert not marker.exists()

    run = tmp_path / "auto"  # the same file found as <run_dir>/last.pth by train.resume=auto
    run.mkdir()
    (run / "last.pth").write_bytes(evil.read_bytes())
    assert run_train([*train_args, f"train.run_dir={run}"]) == 1
    _one_error_line(capsys.readouterr().err, "refusing to load", "last.pth'")
    assert not marker.exists()


# --------------------------------------------------------------------------- impossible configs
@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("train.epochs=two", "train.epochs"),
        ("train.lr=-0.001", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.image_size=40", "data.image_size"),
        ("data.multi_scale=[32,40]", "data.multi_scale"),
        ("train.amp=fp8", "train.amp"),
        ("model.encoder.layers=[3,6,9,13]", "model.encoder.layers"),  # the tiny model has 12 blocks
        ("model.encoder.trainable_blocks=13", "model.encoder.trainable_blocks"),
    ],
)
def test_impossible_config_is_refused_before_anything_is_built(
    tmp_path, train_args, nothing_built, capsys, override, key
):
    assert run_train([*train_args, override, f"train.run_dir={tmp_path / 'run'}"]) == 2
    _one_error_line(capsys.readouterr().err, "error:", f"'{key}'")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


# --------------------------------------------------------------------------- bad images, CLI misuse
def _png_bomb(path: Path, side: int = 100_000) -> None:
    """A ~100-byte PNG that declares side x side pixels (valid CRCs: only the size check stops it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _bad_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bad = {"bomb": folder / "bomb.png", "empty": folder / "empty.jpg", "text": folder / "text.png"}
    _png_bomb(bad["bomb"])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("<html>not an image</html>")
    return bad


def test_bad_images_in_a_benchmark_are_skipped_with_a_message(tmp_path, caplog):
    """Through the dataset builder test.py uses: the good pair loads, each bad file is named once."""
    import datasets
    from config import load_config

    bench = tmp_path / "TestDataset" / "CAMO"
    bad = _bad_images(bench / "Imgs")
    (bench / "GT").mkdir()
    for name in ("good", *bad):
        cv2.imwrite(str(bench / "GT" / f"{name}.png"), np.full((40, 48), 255, np.uint8))
    cv2.imwrite(str(bench / "Imgs" / "good.jpg"), np.full((40, 48, 3), 90, np.uint8))
    cfg = load_config(None, [f"data.root={tmp_path}", "data.image_size=32"])
    sets = datasets.build_test_sets(cfg)
    assert len(sets["CAMO"]) == 1 and sets["CAMO"][0]["name"] == "good"  # (iterating wraps around)
    assert sets["CAMO"][0]["image"].shape == (3, 32, 32)
    for path in bad.values():
        assert str(path) in caplog.text, (path, caplog.text)
    for reason in ("decompression bomb", "zero-byte", "not an image"):
        assert reason in caplog.text, reason


def test_own_images_that_are_all_bad_are_a_clear_error(tmp_path, cli, tiny_dinov3, capsys, caplog):
    """test.py --images: bomb, zero-byte and fake files are skipped by name; with nothing left, one line."""
    from config import load_config, to_dict

    cfg = load_config(
        None,
        [
            f"model.encoder.pretrained_path={tiny_dinov3}",
            "model.channels=16",
            "model.context_heads=2",
            "data.image_size=32",
            "train.amp=off",
        ],
    )
    ckpt = tmp_path / "best.pth"
    save_checkpoint(ckpt, {"model": build_model(cfg).trainable_state_dict(), "config": to_dict(cfg)})
    bad = _bad_images(tmp_path / "photos")
    argv = ["--ckpt", str(ckpt), "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "o"), "train.amp=off"]
    assert cli.main(argv) == 1
    _one_error_line(capsys.readouterr().err, "none of the 3 files", "could be read as an image")
    for path in bad.values():
        assert path.name in caplog.text, (path, caplog.text)
    assert "decompression bomb" in caplog.text


def test_cli_misuse_is_one_line_and_exit_2(tmp_path, cli, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "maps" / "CAMO").mkdir(parents=True)  # a benchmark folder, but no maps in it
    (tmp_path / "maps" / "CAMO" / "notes.txt").write_text("no maps")
    (tmp_path / "x.pth").write_bytes(b"x")
    cases = {
        "no such file": ["--ckpt", str(tmp_path / "missing.pth")],
        "holds no images": ["--ckpt", str(tmp_path / "x.pth"), "--images", str(tmp_path / "empty")],
        "has no prediction maps": ["--preds", str(tmp_path / "maps"), "--data-root", str(tmp_path)],
    }
    for expected, argv in cases.items():
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert expected in capsys.readouterr().err.strip().splitlines()[-1], (expected, argv)
