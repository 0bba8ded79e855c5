"""The Python half of scripts/gpu_check.sh: the environment, a measured training run, the summary.

    python scripts/gpu_check_report.py env OUT/env.json cuda|cpu
    python scripts/gpu_check_report.py train OUT/train_peak.json -- [train.py arguments]
    python scripts/gpu_check_report.py summary OUT

``summary`` reads what the stages left in OUT (stages.tsv, env.json, pytest.xml, the run's
train.log, train_peak.json, test results.json, benchmark.json) and writes OUT/summary.md (one
table) and OUT/summary.json; a stage that failed or never ran shows as such.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGE_TITLES = {
    "env": "environment",
    "pytest": "pytest -m cuda",
    "data": "generated set + random ViT-B",
    "train": "training, 2 epochs bf16",
    "test": "test.py --ckpt",
    "benchmark": "scripts/benchmark.py",
    "efficiency": "scripts/efficiency.py (every shipped config)",
}


def _peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024  # CPU: peak resident memory


def env(path: Path, device: str) -> int:
    import torch

    info = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=torch.cuda.get_device_name(0),
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
            nccl=".".join(map(str, torch.cuda.nccl.version())),
        )
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "?"
    else:
        from scripts.benchmark import _cpu_name

        info["name"] = f"{_cpu_name() or 'CPU'} (dry run on the CPU)"
    path.write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


def train(path: Path, args: list[str]) -> int:
    """``python train.py args``, then its peak memory and wall time into ``path``: on CUDA the peak
    train.py logs itself, on the CPU the child's peak resident memory."""
    import resource

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    wall = time.perf_counter() - t0
    gpu = re.search(r"peak GPU memory ([0-9.]+) GiB", proc.stderr)
    peak = float(gpu.group(1)) * 2**30 if gpu else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    path.write_text(json.dumps({"rc": proc.returncode, "peak_bytes": int(peak), "wall_s": wall}))
    return proc.returncode


# --------------------------------------------------------------------------- summary
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stages(out: Path) -> dict[str, tuple[str, int]]:
    rows = {}
    if (out / "stages.tsv").is_file():
        for line in (out / "stages.tsv").read_text().splitlines():
            name, status, took = line.split("\t")
            rows[name] = (status, int(took))
    return rows


def _pytest(out: Path) -> str:
    try:
        suite = ET.parse(out / "pytest.xml").getroot()
    except (OSError, ET.ParseError):
        return "no report"
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, fail, err, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    failed = [
        f"{c.get('name')}"
        for c in suite.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    text = f"{n - fail - err - skip} passed, {fail + err} failed, {skip} skipped"
    return text + (f" ({', '.join(failed)})" if failed else "")


def _training(out: Path) -> str:
    log = out / "work" / "run" / "train.log"
    if not log.is_file():
        return "no train.log"
    text = log.read_text()
    rates = [float(m) for m in re.findall(r"^.*epoch 2 step .*images_per_s ([0-9.e+-]+)", text, flags=re.M)]
    rates = rates or [float(m) for m in re.findall(r"images_per_s ([0-9.e+-]+)", text)]
    peak = _read_json(out / "train_peak.json") or {}
    parts = []
    if rates:
        parts.append(f"{statistics.median(rates):.0f} images/s (median of epoch 2's log intervals)")
    if "peak_bytes" in peak:
        parts.append(f"peak memory {peak['peak_bytes'] / 2**30:.2f} GiB")
    if "wall_s" in peak:
        parts.append(f"{peak['wall_s']:.0f} s in train.py")
    return ", ".join(parts) or "no figures in train.log"


def _test(out: Path) -> str:
    res = _read_json(out / "work" / "test" / "results.json")
    if not res:
        return "no results.json"
    return "; ".join(
        f"{bench}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k in ("Sm", "wFm", "MAE"))
        for bench, m in res.items()
        if isinstance(m, dict)
    )


BENCH_ROWS = (
    ("encoder efficiency vs measured bf16 matmul peak", "encoder_fraction_of_bf16_peak", "{:.2f}"),
    ("train step ÷ encoder forward", "train_step_over_encoder", "{:.2f}"),
    ("inference ÷ encoder forward", "inference_over_encoder", "{:.2f}"),
    ("train ÷ inference peak memory", "train_mem_over_inference_mem", "{:.2f}"),
    ("share of the step waiting for data, augment_on=workers", "data_wait_share_workers", "{:.0%}"),
    ("share of the step waiting for data, augment_on=device", "data_wait_share_device", "{:.0%}"),
    ("training images/s fed by the loader, augment_on=workers", "fed_images_per_s_workers", "{:.0f}"),
    ("training images/s fed by the loader, augment_on=device", "fed_images_per_s_device", "{:.0f}"),
)


def _benchmark_rows(out: Path) -> list[tuple[str, str]]:
    b = _read_json(out / "benchmark.json")
    if not b:
        return [("benchmark", "no benchmark.json")]
    runs = b.get("runs", [b])
    rows = []
    first = runs[0]["phases"]
    if "matmul" in first:
        mm = first["matmul"]
        side = mm.get("bf16_n", runs[0].get("matmul_n", 4096))
        rows.append((f"bf16 matmul peak ({side}²)", f"{mm['bf16_flops_per_s'] / 1e12:.3g} TFLOP/s"))
    if "loader" in first:
        ld = first["loader"]
        rows.append(("worker-path augmentation, images/s per CPU core", f"{ld['images_per_s_per_worker']:.0f}"))
        if "device_augment_images_per_s" in ld:
            rows.append(
                (
                    f"device-path augmentation, images/s (batch {ld['device_augment_batch']})",
                    f"{ld['device_augment_images_per_s']:.0f}",
                )
            )
    for label, key, fmt in BENCH_ROWS:
        values = [f"{r['batch']}: {fmt.format(r[key])}" for r in runs if key in r]
        if values:
            rows.append((f"{label} (by batch)", ", ".join(values)))
    for r in runs:
        p = r["phases"]
        if all(k in p for k in ("encoder", "train", "infer")):
            rows.append(
                (
                    f"batch {r['batch']}: encoder / train step / inference",
                    f"{p['encoder']['s'] * 1e3:.1f} / {p['train']['s'] * 1e3:.1f} / {p['infer']['s'] * 1e3:.1f} ms, "
                    f"peak train {p['train']['peak_bytes'] / 2**30:.2f} GiB",
                )
            )
    return rows


def summary(out: Path) -> int:
    env_info = _read_json(out / "env.json") or {}
    stages = _stages(out)
    rows: list[tuple[str, str]] = [
        (
            "device",
            f"{env_info.get('name', '?')}"
            + (
                f", compute capability {env_info['capability']}, {env_info['memory_gib']} GiB"
                if "capability" in env_info
                else ""
            )
            + (f", driver {env_info['driver']}" if "driver" in env_info else ""),
        ),
        ("software", f"torch {env_info.get('torch', '?')}, CUDA {env_info.get('cuda', '?')}"),
    ]
    details = {"pytest": _pytest, "train": _training, "test": _test}
    for name, title in STAGE_TITLES.items():
        if name not in stages:
            rows.append((f"stage: {title}", "not run"))
            continue
        status, took = stages[name]
        detail = details[name](out) if name in details else ""
        rows.append((f"stage: {title}", f"{status} ({took} s)" + (f"; {detail}" if detail else "")))
    if "benchmark" in stages:
        rows += _benchmark_rows(out)
    lines = [
        f"# GPU check: {env_info.get('name', '?')}",
        "",
        "Written by `bash scripts/gpu_check.sh`; logs of each stage beside this file.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
    ]
    efficiency = _read_json(out / "efficiency.json")
    if efficiency and efficiency.get("rows"):  # the GPU columns of docs/performance.md's efficiency table
        from scripts.efficiency import table

        lines += ["## Efficiency", "", table(efficiency["rows"], efficiency["device"]), ""]
    (out / "summary.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(dict(rows), indent=1, ensure_ascii=False))
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage:\n" + "\n".join(__doc__.strip().splitlines()[2:5])
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__.strip()}")
        return 0
    if not argv or argv[0] not in ("env", "train", "summary"):
        print(usage, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "env":
        return env(Path(rest[0]), rest[1])
    if cmd == "train":
        return train(Path(rest[0]), rest[2:] if rest[1:2] == ["--"] else rest[1:])
    return summary(Path(rest[0]))


if __name__ == "__main__":
    sys.exit(main())
