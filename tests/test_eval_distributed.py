"""test.py under torchrun: the ranks share the images, rank 0 alone writes the maps and the
results, which are those of one process."""

from __future__ import annotations


def test_two_processes_score_like_one(ddp_run, ddp_scored):
    """The launches' ``score`` step: torchrun --standalone --nproc-per-node=2 test.py --ckpt last.pth."""
    (code,), printed = ddp_run.launches.result("score")
    assert code == 0, printed[-3000:]
    out = ddp_run.work / "score"

    assert (out / "results.json").read_text() == (ddp_scored / "results.json").read_text()
    maps, one = sorted((out / "preds" / "SynthCOD").iterdir()), sorted((ddp_scored / "preds" / "SynthCOD").iterdir())
    assert [m.name for m in maps] == [m.name for m in one] and len(maps) == 5
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(maps, one))
    # One process logged and printed: the checkpoint was loaded twice, the table printed once.
    assert printed.count("INFO engine.trained: loaded") == 1, printed[-3000:]
    assert printed.count("Method") == 1, printed[-3000:]
