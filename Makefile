# Two entry points: `make demo` (set up + main job) and `make test` (set up + tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
DATASET := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-slow clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes, so a second `make` takes seconds.
$(STAMP): pyproject.toml
	@if [ ! -d $(DATASET) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist >/dev/null || (apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist); \
	  else sudo apt-get install -y dataset-fashion-mnist; fi; fi
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The main job: a memory report of two torchvision models (table + plot), then the
# Fashion-MNIST distillation demo (teacher, student with its down-sampling in the stem, RED student).
demo: setup
	@mkdir -p demo_out
	$(BIN)/redistill memory torchvision:resnet18 --input 1x3x224x224 --compare mobilenet_v2 --top 6 \
	  --plot demo_out/memory_resnet18_vs_mobilenet_v2.png
	$(BIN)/redistill demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

clean:
	rm -rf $(VENV) build src/*.egg-info
