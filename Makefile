# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EFFNET_DATA ?= $(abspath ../shared/data)
export EFFNET_DATA

.PHONY: demo test install clean

# torch goes in first and pinned: the local CPU wheel. A bare `pip install torch` (or a
# dependency resolving it) would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The main job: fine-tune the pretrained EfficientNet-Lite0 backbone on the ants/bees photos
# (2 CPU cores, a few minutes), print val top-1, then classify val images with the result.
DEMO_RUN ?= runs/demo
demo: install
	@D=$$($(PY) -m effnet.demo data) && W=$$($(PY) -m effnet.demo weights) && \
	echo "effnet train --model efficientnet_lite0 --weights $$W --data $$D --recipe finetune --epochs 4 --batch-size 16 --out $(DEMO_RUN)" && \
	$(VENV)/bin/effnet train --model efficientnet_lite0 --weights "$$W" --data "$$D" --recipe finetune \
		--epochs 4 --batch-size 16 --out $(DEMO_RUN) && \
	echo "effnet predict --weights $(DEMO_RUN)/best --topk 1 <3 val ants> <3 val bees>" && \
	$(VENV)/bin/effnet predict --weights $(DEMO_RUN)/best --topk 1 \
		$$(ls "$$D"/val/ants/*.jpg | head -3) $$(ls "$$D"/val/bees/*.jpg | head -3)

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
