# E2Net-DINOv3 — `make demo` trains and scores a tiny model on generated data; `make test` runs the suite.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo clean

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -r requirements.txt
	$(PY) -c "import torch, torchvision, transformers, timm, py_sod_metrics, omegaconf"
	touch $@

install: .venv/.installed

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf .venv .pytest_cache
