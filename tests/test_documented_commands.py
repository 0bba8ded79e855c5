"""Every command in README.md and docs/*.md runs as written, at tiny scale.

The commands are read from the documents' code blocks (```bash fences and indented blocks), so the
docs and this test cannot drift apart: a documented script without a runner here fails the test.
Each script's first documented command runs end to end (in this process where the script has a
``main(argv)``: importing torch again would cost more than the run), with documented paths swapped
for tiny ones and tiny sizes appended (a later flag or ``key=value`` wins); every other documented
command of it must get through its argument parser and, for config overrides, the config loader.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from engine import amp
from engine.logger import TENSORBOARD_COMMAND
from helpers import ROOT, load_test_cli

# The benchmark picks its precision as a user's run does: the real probe, not conftest's guard.
CPU_PROBE = amp.cpu_matmul_rates
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Documented commands this test does not run, and where they are proven instead.
NOT_RUN = {
    "make": "`make test` is this suite; `make demo` trains for minutes (its steps are the commands below)",
    "huggingface-cli": "downloads gated weights from the network",
    "hf": "downloads weights from the network",
    "torchrun": "tests/test_ddp.py, test_multinode.py (with an elastic restart) and test_eval_distributed.py launch "
    "train.py and test.py through torchrun, the multi-node line as docs/distributed.md writes it",
    "sbatch": "tests/test_slurm.py runs scripts/slurm/train.sbatch with stand-ins for srun and scontrol",
    "export": "sets a variable for the commands after it (test_multinode.py runs with the documented ones)",
    "tensorboard": "tests/test_tensorboard_server.py serves a run with engine.logger.TENSORBOARD_COMMAND",
}


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every command line of the documents' shell code blocks; shell variables
    set in a block are expanded, environment prefixes (``HF_HUB_OFFLINE=1``) and synopses
    (``[--flag]`` placeholders) are left out."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        block, fence = [], None  # fence: the language of the open ``` block
        for i, line in enumerate(lines + [""]):
            if line.startswith("```"):
                fence = line.strip()[3:] if fence is None else None
                if fence is None:
                    found += _commands(doc, block)
                    block = []
            elif fence is not None:
                if fence == "bash":
                    block.append((i + 1, line))
            elif line.startswith("    ") and line.strip() and (not block or block[-1][0] == i):
                block.append((i + 1, line[4:]))  # an indented block: consecutive lines
            elif block:
                found += _commands(doc, block)
                block = []
    return found


def _commands(doc: Path, block: list[tuple[int, str]]) -> list[tuple[str, list[str]]]:
    text, where, out, variables = "", 0, [], {}
    for n, line in block:
        where = where or n
        text += line
        if text.endswith("\\") or text.count('"') % 2:  # a continued line, or a quoted value going on
            text = text.rstrip("\\") + " "
            continue
        argv = shlex.split(text, comments=True)
        text, here = "", f"{doc.name}:{where}"
        where = 0
        if len(argv) == 1 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            name, value = argv[0].split("=", 1)
            variables[name] = shlex.split(value)
            continue
        argv = [x for a in argv for x in (variables.get(a[1:], [a]) if a.startswith("$") else [a])]
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
            argv.pop(0)
        if not argv or any(a.startswith("[") for a in argv):
            continue
        if argv[0].endswith("/python"):
            argv[0] = "python"
        out.append((here, argv))
    return out


def _key(argv: list[str]) -> str:
    return argv[1] if argv[0] in ("python", "bash") else argv[0]


COMMANDS = documented_commands()


@pytest.fixture(scope="module")
def tiny(logged_run: Path, tmp_path_factory) -> dict:
    """Tiny stand-ins for the documented paths, and the overrides that make a recipe tiny."""
    from helpers import tiny_model_args

    tmp = tmp_path_factory.mktemp("documented")
    data = logged_run.parent.parent / "data"
    encoder = next(a.split("=", 1)[1] for a in _run_args(logged_run) if a.startswith("model.encoder.pretrained_path="))
    return {
        "tmp": tmp,
        "data": data,
        "ckpt": logged_run / "best.pth",
        "overrides": [*tiny_model_args(data, Path(encoder))[2:], "train.epochs=1", "train.num_workers=0"],
    }


def _run_args(run: Path) -> list[str]:
    import yaml

    enc = yaml.safe_load((run / "config.yaml").read_text())["model"]["encoder"]["pretrained_path"]
    return [f"model.encoder.pretrained_path={enc}"]


def _swap(argv: list[str], tiny: dict) -> list[str]:
    """Documented paths -> tiny ones (a file or folder name the docs use as an example)."""
    tmp = tiny["tmp"]
    out = []
    for a in argv:
        if a.endswith(".pth"):
            a = str(tiny["ckpt"])
        elif a.rstrip("/") in ("data/COD", "data/synthetic-cod"):
            a = str(tiny["data"])
        elif a.rstrip("/") == "my_photos":
            a = str(tiny["data"] / "TestDataset" / "SynthCOD" / "Imgs")
        elif (
            a.endswith((".onnx", ".json"))
            or a.rstrip("/") in ("my_masks", "gpu_check", "OUT")
            or a.startswith("checkpoint/")
        ):
            a = str(tmp / a.rstrip("/").replace("/", "_"))
        out.append(a)
    return out


class _Parsed(Exception):
    pass


def _parse_only(main, argv: list[str], monkeypatch) -> argparse.Namespace:
    """The namespace ``main(argv)`` parses, stopping right after its argument parser accepted it."""
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse)
        with pytest.raises(_Parsed) as done:
            main(argv)
    return done.value.args[0]


def _main(script: str):
    if script == "test.py":
        return load_test_cli("e2net_test_cli_documented").main
    if script == "train.py":
        import train

        return train.main
    import importlib

    return importlib.import_module(script.removesuffix(".py").replace("/", ".")).main


def test_every_documented_command_is_covered():
    keys = {_key(argv) for _, argv in COMMANDS}
    assert {"scripts/benchmark.py", "scripts/gpu_check.sh", "test.py", "scripts/export.py"} <= keys  # parsing works
    uncovered = keys - set(NOT_RUN) - set(RUN)
    assert not uncovered, f"documented but neither run nor excused here: {sorted(uncovered)}"


def test_readme_shows_the_tensorboard_command_of_engine_logger():
    shown = [argv for _, argv in COMMANDS if argv[0] == "tensorboard"]
    assert shown == [shlex.split(TENSORBOARD_COMMAND.format(logdir="checkpoint/"))]
    make = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "from engine.logger import TENSORBOARD_COMMAND" in make and "samples_per_plugin" not in make


@pytest.mark.parametrize("where, argv", [c for c in COMMANDS if _key(c[1]).endswith(".py")], ids=lambda v: str(v))
def test_documented_arguments_are_accepted(where, argv, tiny, monkeypatch):
    monkeypatch.chdir(ROOT)
    ns = _parse_only(_main(argv[1]), _swap(argv[2:], tiny), monkeypatch)
    if getattr(ns, "overrides", None) and hasattr(ns, "config"):
        from config import load_config

        load_config(ns.config, ns.overrides)


# --------------------------------------------------------------------------- the first command of each script, run
def _train(argv, tiny, monkeypatch):  # the logged_run fixture trained; a real run of the recipe file
    from helpers import run_train

    assert run_train([*argv, *tiny["overrides"], f"train.run_dir={tiny['tmp'] / 'train'}", "train.max_steps=1"]) == 0


def _test(argv, tiny, monkeypatch):
    images = [argv for _, argv in COMMANDS if argv[:2] == ["python", "test.py"] and "--images" in argv][0][2:]
    out = tiny["tmp"] / "my_masks"
    assert _main("test.py")([*_swap(images, tiny), "train.amp=off"]) == 0
    assert len(list((out / "masks").glob("*.png"))) == len(
        list((tiny["data"] / "TestDataset" / "SynthCOD" / "Imgs").iterdir())
    )


def _export(argv, tiny, monkeypatch):
    """The suite's one dynamic-shape ONNX export (~45 s): the graph and its parity are checked here."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from scripts import export

    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert export.main(argv) == 0
    printed = stdout.getvalue()
    worst = float(re.search(r"largest difference: (\S+)", printed).group(1))
    assert worst < 1e-4 and printed.count("input ") == 3  # three inputs the export never saw

    onnx_path = Path(argv[argv.index("--onnx") + 1])
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    (inp,), (out,) = graph.input, graph.output
    assert [d.dim_param != "" for d in inp.type.tensor_type.shape.dim] == [True, False, True, True]
    assert (inp.name, out.name) == ("image", "probability")

    # Independently of the script: a batch of 4 at a wide size, against the checkpoint loaded afresh.
    model, patch, _ = export.load_for_export(tiny["ckpt"], None, [])
    x = torch.rand(4, 3, 3 * patch, 7 * patch, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = torch.sigmoid(model(x)[-1]).numpy()
    (got,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    assert got.shape == (4, 1, 3 * patch, 7 * patch) and float(np.abs(got - ref).max()) < 1e-4
    assert got.min() >= 0.0 and got.max() <= 1.0


def _model_info(argv, tiny, monkeypatch):
    _main("scripts/model_info.py")([*argv, *tiny["overrides"]])


def _benchmark(argv, tiny, monkeypatch):
    monkeypatch.setattr(amp, "cpu_matmul_rates", CPU_PROBE)
    assert _main("scripts/benchmark.py")([*argv, "--tiny"]) == 0
    report = json.loads(Path(argv[argv.index("--json") + 1]).read_text())
    from scripts.benchmark import GOALS, PHASES

    assert set(report["phases"]) == set(PHASES) and set(GOALS) <= set(report["ratios"])
    assert set(report["phases"]["feed"]) >= {"workers", "device"} and report["phases"]["feed"]["workers"]["steps"] == 1
    for key in GOALS:
        assert report[key] > 0, key

    # Two batch sizes, as gpu_check.sh asks for: the second reuses the phases measured once.
    several = Path(argv[argv.index("--json") + 1]).with_name("batches.json")
    phases = ["--phases", "matmul,loader,encoder", "--batch", "1,2", "--json", str(several)]
    assert _main("scripts/benchmark.py")(["--tiny", *phases]) == 0
    runs = json.loads(several.read_text())["runs"]
    assert [r["batch"] for r in runs] == [1, 2] and runs[0]["phases"]["matmul"] == runs[1]["phases"]["matmul"]
    assert runs[0]["phases"]["encoder"] != runs[1]["phases"]["encoder"]


GPU_CHECK_SKIP = "pytest test benchmark efficiency"


def background_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """scripts/gpu_check.sh's documented command as a CPU dry run, in the session's background launches
    (its stages are processes of one thread each); ``_gpu_check`` reads what it did. Left out: the
    pytest stage (this suite's cuda tests skip on a CPU) and the stages whose commands this module runs
    in-process already (test.py --ckpt, scripts/benchmark.py, also at two batch sizes, and
    scripts/efficiency.py's measurement)."""
    if "test_first_documented_command_runs[scripts/gpu_check.sh]" not in tests:
        return {}
    argv = next(a for _, a in COMMANDS if _key(a) == "scripts/gpu_check.sh")
    env = f"env GPU_CHECK_DEVICE=cpu GPU_CHECK_SKIP={shlex.quote(GPU_CHECK_SKIP)}"
    return {"gpu_check": f"{env} {shlex.join(['bash', argv[1], str(folder / 'gpu_check')])}"}


def _gpu_check(argv, tiny, monkeypatch, background):
    (code,), printed = background.result("gpu_check")
    out = background.folder / "gpu_check"
    assert code == 0, printed[-3000:] + (out / "summary.md").read_text()
    stages = dict(line.split("\t")[:2] for line in (out / "stages.tsv").read_text().splitlines())
    skipped = dict.fromkeys(GPU_CHECK_SKIP.split(), "skipped (GPU_CHECK_SKIP)")
    assert stages == dict.fromkeys(("env", "data", "train"), "ok") | skipped
    summary = (out / "summary.md").read_text()
    assert summary.count("| stage: ") == len(stages) and summary.count("skipped (GPU_CHECK_SKIP)") == len(skipped), (
        summary
    )


def _efficiency(argv, tiny, monkeypatch):
    """One config's row, measured in-process on the tiny model (the documented command measures every
    shipped config at its own size, for minutes): every column filled, and the table prints it."""
    from scripts import efficiency

    _parse_only(efficiency.main, argv, monkeypatch)
    row = efficiency.measure(str(ROOT / "e2net_dinov3.yaml"), tiny["overrides"], "cpu", 2, [1, 2], 1, 1)
    assert row["train_batch"] == 2 and row["trainable_params"] < row["params"] and row["gflops"] > 0
    assert row["train_peak_bytes"] > 0 and row["images_per_s_b1"] > 0 and row["images_per_s_b2"] > 0
    assert "| `e2net_dinov3.yaml` | 32 |" in efficiency.table([{"config": "e2net_dinov3.yaml", **row}], "cpu")


def _check_dataset(argv, tiny, monkeypatch):
    assert _main("scripts/check_dataset.py")(argv) == 0


def _prepare_data(argv, tiny, monkeypatch):
    from test_prepare_data import PUBLISHED, make_downloads

    from scripts import prepare_data

    small = dict.fromkeys(PUBLISHED, 1)  # one pair per archive part, published counts to match
    monkeypatch.setattr(
        prepare_data,
        "ARCHIVES",
        tuple(
            dataclasses.replace(a, parts=tuple(dataclasses.replace(p, published=1) for p in a.parts))
            for a in prepare_data.ARCHIVES
        ),
    )
    dl = make_downloads(tiny["tmp"] / "dl", small)
    argv = [str(dl) if a in ("~/Downloads/cod", "DIR") else a for a in argv]
    argv[argv.index("--out") + 1] = str(tiny["tmp"] / "COD")
    assert prepare_data.main(argv) == 0
    assert (tiny["tmp"] / "COD" / "TestDataset" / "NC4K" / "GT").is_dir()


def _make_tiny_dinov3(argv, tiny, monkeypatch):
    _main("scripts/make_tiny_dinov3.py")([*argv, "--hidden", "32", "--heads", "2", "--layers", "2"])
    assert (Path(argv[0]) / "config.json").is_file()


def _make_tiny_sam2(argv, tiny, monkeypatch):
    _main("scripts/make_tiny_sam2.py")(argv)
    assert (Path(argv[0]) / "model.safetensors").is_file()


def _make_synthetic_cod(argv, tiny, monkeypatch):
    assert _main("scripts/make_synthetic_cod.py")([*argv, "--train", "3", "--test", "2", "--size", "32"]) == 0


RUN = {
    "train.py": _train,
    "test.py": _test,
    "scripts/export.py": _export,
    "scripts/model_info.py": _model_info,
    "scripts/benchmark.py": _benchmark,
    "scripts/efficiency.py": _efficiency,
    "scripts/gpu_check.sh": _gpu_check,
    "scripts/check_dataset.py": _check_dataset,
    "scripts/prepare_data.py": _prepare_data,
    "scripts/make_tiny_dinov3.py": _make_tiny_dinov3,
    "scripts/make_tiny_sam2.py": _make_tiny_sam2,
    "scripts/make_synthetic_cod.py": _make_synthetic_cod,
}


@pytest.mark.parametrize("script", sorted(RUN))
def test_first_documented_command_runs(script, tiny, monkeypatch, background):
    where, argv = next((w, a) for w, a in COMMANDS if _key(a) == script)
    monkeypatch.chdir(ROOT)
    if script == "scripts/gpu_check.sh":
        return _gpu_check(argv, tiny, monkeypatch, background)
    RUN[script](_swap(argv[2:], tiny), tiny, monkeypatch)
