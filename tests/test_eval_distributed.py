"""test.py under torchrun: the ranks share the images, rank 0 alone writes the maps and the
results, which are those of one process."""

from __future__ import annotations

import subprocess

from helpers import ROOT, SCORE_ARGS, documented_env, torchrun


def test_two_processes_score_like_one(tmp_path, ddp_run, ddp_scored):
    out = tmp_path / "out"
    cmd = [*torchrun(2), "test.py", "--ckpt", str(ddp_run.run / "last.pth"), "--out", str(out), *SCORE_ARGS]
    res = subprocess.run(cmd, cwd=ROOT, env=documented_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    assert (out / "results.json").read_text() == (ddp_scored / "results.json").read_text()
    maps, one = sorted((out / "preds" / "SynthCOD").iterdir()), sorted((ddp_scored / "preds" / "SynthCOD").iterdir())
    assert [m.name for m in maps] == [m.name for m in one] and len(maps) == 5
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(maps, one))
    # One process logged and printed: the checkpoint was loaded twice, the table printed once.
    assert res.stderr.count("INFO engine.trained: loaded") == 1, res.stderr[-3000:]
    assert res.stdout.count("Method") == 1, res.stdout
