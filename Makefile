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

demo: install
	$(VENV)/bin/effnet models
	$(VENV)/bin/effnet info efficientnet_b0
	$(VENV)/bin/effnet predict -v --topk 3 --batch-size 32 $(EFFNET_DATA)/imagenet-samples/images

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
