# E2Net-DINOv3 — `make demo` trains and scores a tiny model on generated data; `make test` runs the suite.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint test demo clean

.venv/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -r requirements-dev.txt
	$(PY) -c "import torch, torchvision, transformers, timm, peft, kornia, onnxruntime, py_sod_metrics, omegaconf"
	touch $@

install: .venv/.installed

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf .venv .pytest_cache

# The embedded default: no network, no weights, no data needed.
DEMO_ENCODER := checkpoint/dinov3-tiny-random
DEMO_DATA    := data/synthetic-cod
DEMO_RUN     := checkpoint/demo

demo: install
	$(PY) scripts/make_tiny_dinov3.py $(DEMO_ENCODER) --patch 8
	$(PY) scripts/make_synthetic_cod.py --out $(DEMO_DATA) --train 600 --test 100 --size 256 --seed 0
	$(PY) train.py --config configs/demo.yaml train.run_dir=$(DEMO_RUN) train.resume=
	$(PY) test.py --ckpt $(DEMO_RUN)/best.pth --out $(DEMO_RUN)/test
	@$(PY) -c "from engine.logger import TENSORBOARD_COMMAND; print('TensorBoard: .venv/bin/' + TENSORBOARD_COMMAND.format(logdir='checkpoint/'))"
