"""Shared fixtures: tiny random DINOv3 models written by scripts/make_tiny_dinov3.py (no network),
synthetic COD data, and one seconds-long training run that the train.py tests share."""

from __future__ import annotations

import functools
import inspect
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
SUITE_THREADS = min(2, torch.get_num_threads())  # every in-process computation of the suite runs on these
torch.set_num_threads(SUITE_THREADS)

# Property tests draw the same examples on every run, so a failure replays as it is. HYPOTHESIS_PROFILE=explore
# draws new ones; a failure there prints its seed (replay with --hypothesis-seed) and @reproduce_failure.
settings.register_profile("fixed", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

from helpers import Launches, run_train, tiny_model_args  # noqa: E402
from scripts.make_tiny_dinov3 import make_tiny_dinov3  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dinov3_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(**kwargs) -> folder`` of a tiny random DINOv3 ViT; kwargs as ``make_tiny_dinov3``.

    Folders are cached per kwargs for the whole session, so asking twice costs nothing.
    """
    cache: dict[tuple, Path] = {}
    defaults = {k: v.default for k, v in inspect.signature(make_tiny_dinov3).parameters.items()}

    def factory(**kwargs) -> Path:
        key = tuple(sorted((k, v) for k, v in kwargs.items() if defaults.get(k) != v))
        if key not in cache:
            name = "dinov3-" + "-".join(f"{k}{v}" for k, v in key) if key else "dinov3-default"
            cache[key] = make_tiny_dinov3(tmp_path_factory.mktemp(name[:60]), **kwargs)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_dinov3(tiny_dinov3_factory: Callable[..., Path]) -> Path:
    """Folder of a tiny random DINOv3 ViT: hidden 64, 12 blocks, 2 heads, 4 registers, patch 16."""
    return tiny_dinov3_factory()


@pytest.fixture(scope="session")
def synthetic_cod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data root of 12 synthetic 48-px training images (seed 0) and no test set: 8 train + 4
    validation images at ``data.val_fraction=0.34``. Read-only: copy it before changing it."""
    from scripts.make_synthetic_cod import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, n_train=12, n_test=0, size=48, seed=0)
    return data


class TinyRun:
    """The shared train.py run: ``args`` of a seconds-long 2-epoch run (2 optimizer steps per
    epoch, float32, deterministic), and its run folders, each trained once on first use.
    The folders are read-only: copy them before resuming or changing them."""

    def __init__(self, args: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
        self.args = args
        self._tmp = tmp_path_factory

    def _train(self, name: str, *overrides: str) -> Path:
        run = self._tmp.mktemp(name) / "run"
        torch.set_num_threads(SUITE_THREADS)  # the runs are compared bit for bit, whenever each is first used
        assert run_train([*self.args, *overrides, f"train.run_dir={run}"]) == 0
        return run

    @functools.cached_property
    def straight(self) -> Path:
        """Both epochs, never interrupted: config.yaml, last.pth, best.pth, train.log, tb/."""
        return self._train("straight")

    @functools.cached_property
    def one_epoch(self) -> Path:
        """Stopped after epoch 1 (``train.max_steps=2``): last.pth and best.pth of epoch 1."""
        return self._train("one_epoch", "train.max_steps=2")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synthetic_cod: Path, tiny_dinov3_factory) -> TinyRun:
    """The 4-block tiny DINOv3 (width 16, 32-px images) trained on ``synthetic_cod``, batch 4."""
    args = [
        *tiny_model_args(synthetic_cod, tiny_dinov3_factory(layers=4)),
        "data.val_fraction=0.34",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.log_interval=1",
        "train.warmup_epochs=1",
        "train.deterministic=true",
        "train.lr=1e-3",
        "train.epochs=2",
    ]
    return TinyRun(args, tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_cpu_precision_probe(monkeypatch):
    """train.amp=auto on a CPU times a matmul (~0.5 s) and then trains in the precision this host
    favours: tests pass train.amp=off (tiny_model_args does), and test_precision stands in for the probe."""
    from engine import amp

    def probe(*args, **kwargs):
        raise AssertionError("the CPU precision probe ran in a test: pass train.amp=off")

    monkeypatch.setattr(amp, "cpu_matmul_rates", probe)


@dataclass(frozen=True)
class DDPRun:
    args: list[str]  # train.py's arguments, less train.run_dir
    run: Path  # its run folder: last.pth holds the final state
    log: str  # what torchrun printed
    data: Path  # data.root: 12 training images, 5 test images (TestDataset/SynthCOD)
    launches: Launches  # the background launches: its other steps (see ddp_steps)
    work: Path  # the folder of those steps' outputs


@pytest.fixture(scope="session")
def tiny_sam2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random SAM2 Hiera (6 blocks, widths 16-128) in the layout of facebook/sam2.1-hiera-*."""
    from scripts.make_tiny_sam2 import make_tiny_sam2

    return make_tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="session", autouse=True)
def background(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Launches | None:
    """Subprocess launches that need nothing from a test but fixtures, started one after another in
    one background shell as the session begins (:class:`helpers.Launches`): they run on the core the
    in-process tests leave idle, and a test reads its step with ``background.result(step)``. The
    steps: each collected test module's ``background_steps(request, folder, tests) -> {step: command}``
    (``tests``: the names of its tests this session runs, with and without their parameters; those it
    names in ``WAITING_STEPS`` go to the second shell)
    and the DDP launches (:func:`ddp_steps`) a collected module reads, in the order the tests will
    want them."""
    folder = tmp_path_factory.mktemp("background")
    items = request.session.items
    modules = list(dict.fromkeys(it.module for it in items if getattr(it, "module", None)))
    order = {m.__name__: i for i, m in enumerate(modules)}
    planned: list[tuple[int, str, str]] = []  # (when its module's tests run, step, command)
    waiting: set[str] = set()  # steps that mostly wait: the second shell
    for i, module in enumerate(modules):
        waiting |= set(getattr(module, "WAITING_STEPS", ()))
        if hasattr(module, "background_steps"):
            mine = [it for it in items if getattr(it, "module", None) is module]
            tests = {it.originalname for it in mine} | {it.name for it in mine}
            planned += [(i, name, cmd) for name, cmd in module.background_steps(request, folder, tests).items()]
    needs_ddp = [order[it.module.__name__] for it in items if "ddp_run" in it.fixturenames]
    if needs_ddp:
        for name, (reader, cmd) in ddp_steps(request, folder).items():
            when = min(needs_ddp) if reader is None else order.get(reader)
            if when is not None:
                planned.append((when, name, cmd))
    steps = {name: cmd for _, name, cmd in sorted(planned, key=lambda p: p[0])}
    if not steps:
        yield None
        return
    from helpers import documented_env

    launches = Launches(folder, steps, documented_env(), waiting & steps.keys())
    yield launches
    launches.stop()


DDP_ARGS: list[str] = []  # train.py's arguments of the DDP launches, less train.run_dir (set by ddp_steps)


def ddp_steps(request: pytest.FixtureRequest, folder: Path) -> dict[str, tuple[str | None, str]]:
    """The suite's DDP launches, of the fullest model: configs/e2net_dual.yaml with model.fusion=levels,
    a tiny SAM2 Hiera with an adapter after every block beside a 4-block DINOv3 (width 32) carrying
    LoRA, an adapter on every block and its pyramid, both trunks with activation checkpointing; 8 training images, 4 validation images, batch 2
    per process, 2 epochs (4 optimizer steps); best.pth follows the training loss gathered from both
    processes. Every trainable weight must get a gradient in every step, or DDP's reducer stops the run.

    Steps, each a test's subject: ``train`` (torchrun --standalone, two gloo processes: test_ddp),
    ``score`` (test.py --ckpt on its last.pth through torchrun: test_eval_distributed), ``nodes`` (the
    documented multi-node line as two machines of one process each, which lose rank 1 mid-epoch and
    restart: test_multinode), ``usr1`` (one process under the documented line, torchrun passed
    SIGUSR1 as srun does: test_slurm)."""
    from helpers import SCORE_ARGS, loopback_torchrun, torchrun
    from scripts.make_synthetic_cod import generate

    encoder = request.getfixturevalue("tiny_dinov3_factory")(hidden=32, layers=4, heads=2)
    sam2 = request.getfixturevalue("tiny_sam2")
    data, work = folder / "ddp_data", folder / "ddp"
    generate(data, n_train=12, n_test=5, size=48, seed=0)
    DDP_ARGS[:] = [
        "--config",
        str(ROOT / "configs" / "e2net_dual.yaml"),
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.encoder.simple=false",
        "model.encoder.image_size=32",
        "model.encoder.lora.rank=4",
        "model.encoder.adapter.blocks=all",
        "model.encoder.activation_checkpointing=true",  # both trunks recompute their blocks (encoder2's by the recipe)
        f"model.encoder2.pretrained_path={sam2}",
        "model.encoder2.image_size=64",
        "model.fusion=levels",
        "model.channels=16",
        "model.context_heads=2",
        f"data.root={data}",
        "data.image_size=64",
        "data.val_fraction=0.34",
        "train.amp=off",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.log_interval=1",
        "train.epochs=2",
        "train.best_metric=train_loss",
    ]
    args, run, line = DDP_ARGS, work / "run", shlex.join
    # 2 steps per epoch: a save at step 3 (epoch 2, batch 1 of 2); rank 1 dies in its 4th batch.
    nodes = [*args, f"train.run_dir={work / 'nodes'}", "train.save_every_steps=3"]
    node = line(loopback_torchrun(nodes, nnodes=2, nproc=1, max_restarts=1, script="tests/hooked_train.py"))
    usr1 = [*args, f"train.run_dir={work / 'usr1'}"]
    kill, logs = "env KILL_RANK=1 KILL_AT_BATCH=4", [shlex.quote(str(work / f"node{i}.log")) for i in (0, 1)]
    score = [*torchrun(2), "test.py", "--ckpt", str(run / "last.pth"), "--out", str(work / "score"), *SCORE_ARGS]
    usr1 = line(loopback_torchrun(usr1, nnodes=1, nproc=1, script="tests/hooked_train.py"))
    return {  # step: (the test module that reads it, None: every user of ddp_run; its command)
        "train": (None, line([*torchrun(2), "train.py", *args, f"train.run_dir={run}"])),
        "score": ("test_eval_distributed", line(score)),
        "nodes": (
            "test_multinode",
            f"{kill} {node} > {logs[0]} 2>&1 & a=$!; {kill} {node} > {logs[1]} 2>&1 & b=$!; "
            'wait $a; ra=$?; wait $b; codes="$ra $?"',
        ),
        "usr1": ("test_slurm", f"env SIGNAL_LAUNCHER_AT_BATCH=2 {usr1}"),
    }


@pytest.fixture(scope="session")
def ddp_run(background: Launches) -> DDPRun:
    """The DDP training of :func:`ddp_steps`, finished: tests/test_ddp.py checks the run itself; the
    evaluation, multi-node and SLURM tests read their own steps (``ddp_run.launches.result(step)``)."""
    (code,), printed = background.result("train")
    assert code == 0, printed[-3000:]
    work = background.folder / "ddp"
    return DDPRun(list(DDP_ARGS), work / "run", printed, background.folder / "ddp_data", background, work)


@pytest.fixture(scope="session")
def ddp_scored(ddp_run: DDPRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test.py in one process on ``ddp_run``'s last.pth: its output folder (results.json, preds/)."""
    from helpers import SCORE_ARGS, load_test_cli

    out = tmp_path_factory.mktemp("ddp_scored")
    cli = load_test_cli("e2net_test_cli_scored")
    assert cli.main(["--ckpt", str(ddp_run.run / "last.pth"), "--out", str(out), *SCORE_ARGS]) == 0
    return out


@pytest.fixture(autouse=True)
def _same_threads():
    """Each test starts on the suite's thread count, whatever the one before set (an entry point run
    in-process, e.g. scripts/benchmark.py --threads, keeps its own): the thread count changes the
    rounding of sums, and the shared runs compared bit for bit are trained at different moments."""
    torch.set_num_threads(SUITE_THREADS)
    yield
    torch.set_num_threads(SUITE_THREADS)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Entry points called in-process (train.main, test.main) install log handlers on the root
    logger; remove them after each test so one test's console output never leaks into another's."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def logged_run(tmp_path_factory: pytest.TempPathFactory, tiny_dinov3_factory: Callable[..., Path]) -> Path:
    """Run folder of a finished seconds-long training (``helpers.tiny_model_args``, 12 epochs of 8
    images, each validated: 12 image grids, more than the 10 TensorBoard keeps by default), with
    ``best.pth``, ``tb/`` and ``train.log``; its data (``make_synthetic_cod``, benchmark SynthCOD)
    is the sibling folder ``data``."""
    from helpers import run_train, tiny_model_args
    from scripts.make_synthetic_cod import generate

    root = tmp_path_factory.mktemp("tiny_run")
    generate(root / "data", n_train=10, n_test=3, size=48, seed=0)
    run = root / "checkpoint" / "run"
    args = [
        *tiny_model_args(root / "data", tiny_dinov3_factory(layers=4)),
        "data.val_fraction=0.2",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.epochs=12",
        "train.amp=off",
        f"train.run_dir={run}",
    ]
    assert run_train(args) == 0
    return run
