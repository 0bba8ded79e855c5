"""scripts/export.py --hf: a trained model as a Hugging Face-format folder (config.json,
model.safetensors with the trained parts only, a model card), which test.py and the ONNX export
read like the checkpoint it came from; --push-to-hub hands it to huggingface_hub."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from build import build_model
from config import load_config, to_dict
from engine.checkpoint import load_checkpoint
from engine.hub import load_hf_folder, save_hf_folder
from helpers import SCORE_ARGS, load_test_cli
from scripts import export


def test_hf_folder_scores_like_its_checkpoint(tmp_path, ddp_run, ddp_scored, monkeypatch, capsys):
    uploads = []  # the Hub client records instead of uploading: the tests never use the network
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw))
    last, folder, results = ddp_run.run / "last.pth", tmp_path / "e2net-tiny", ddp_scored / "results.json"
    argv = ["--ckpt", str(last), "--hf", str(folder), "--results", str(results), "--push-to-hub", "me/e2net-tiny"]
    assert export.main(argv) == 0
    assert "uploaded to https://huggingface.co/me/e2net-tiny" in capsys.readouterr().out
    assert uploads == [{"folder_path": str(folder), "repo_id": "me/e2net-tiny", "repo_type": "model"}]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    ckpt = load_checkpoint(last)
    assert json.loads((folder / "config.json").read_text()) == ckpt["config"]
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == ckpt["model"].keys()
    assert all(torch.equal(weights[k], ckpt["model"][k]) for k in weights)
    frozen = build_model(load_config(ckpt["config"])).frozen_keys()
    assert frozen and not frozen & weights.keys()  # no encoder trunk weights

    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "facebook/dinov3-vitb16-pretrain-lvd1689m"
    sm = json.loads(results.read_text())["SynthCOD"]["Sm"]
    assert f"| e2net-tiny | {sm:.3f} |" in card.text and "python test.py --ckpt e2net-tiny" in card.text

    out = tmp_path / "scored"
    assert load_test_cli("e2net_test_cli_hub").main(["--ckpt", str(folder), "--out", str(out), *SCORE_ARGS]) == 0
    assert (out / "results.json").read_text() == results.read_text()
    from_folder, from_ckpt = export.load_for_export(folder, None, [])[0], export.load_for_export(last, None, [])[0]
    a, b = from_folder.state_dict(), from_ckpt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_folder_holds_every_trained_tensor(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weights = {
        f"decoder.block{i}.{part}": torch.randn(3, 2, generator=gen).to(dtype)
        for i, dtype in enumerate((torch.float32, torch.bfloat16, torch.float16))
        for part in ("weight", "bias")
    }
    ckpt = {"model": weights, "config": to_dict(load_config(None, [])), "epoch": 3, "step": 12, "best": 0.5}
    save_hf_folder(ckpt, tmp_path / "e2net")
    back = load_hf_folder(tmp_path / "e2net")
    assert back["model"].keys() == weights.keys(), f"missing: {sorted(weights.keys() - back['model'].keys())}"
    assert all(back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v) for k, v in weights.items())
    assert back["config"] == ckpt["config"] and (back["epoch"], back["step"], back["best"]) == (3, 12, 0.5)


def test_export_needs_an_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main(["--ckpt", str(tmp_path)])
    assert exit_.value.code == 2 and "give --onnx FILE, --hf DIR or both" in capsys.readouterr().err
