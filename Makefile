# Both targets set themselves up on a fresh machine: a virtual environment in .venv with
# cvtool and its train + dev extras (PyTorch included), installed once.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CVTOOL := $(VENV)/bin/cvtool
STAMP  := $(VENV)/.cvtool-installed
DATA   ?= data/fashion-mnist
DEMO   ?= runs/demo
FMNIST_SOURCE := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

# Fashion-MNIST → train (5 epochs, a few minutes on 2 CPU cores) → ONNX → submission → evaluation.
demo: $(STAMP)
	@test -d $(FMNIST_SOURCE) || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
		echo "Debian's dataset-fashion-mnist is not available; cvtool will download the files"
	$(CVTOOL) data fashion-mnist $(DATA)
	$(CVTOOL) train $(DATA)/train --arch simple_cnn --epochs 5 --hflip --out $(DEMO)
	$(CVTOOL) export $(DEMO)/best.pt -o $(DEMO)/model.onnx
	$(CVTOOL) predict $(DATA)/test --model $(DEMO)/model.onnx -o $(DEMO)/submission.csv
	$(CVTOOL) evaluate $(DATA)/test --labels $(DATA)/test_labels.csv --model $(DEMO)/model.onnx \
		-o $(DEMO)/eval --failures 16 --occlusion 2
	@echo
	@echo "Done. Everything is under $(DEMO)/:"
	@echo "  best.pt, last.pt, metrics.csv   training checkpoints and per-epoch metrics (curves.png)"
	@echo "  model.onnx                      self-describing model (preprocessing + class names inside)"
	@echo "  submission.csv                  Kaggle-style predictions for $(DATA)/test (id,label)"
	@echo "  eval/report.html                the evaluation report (metrics, confusion matrices, mistakes)"
	@echo "  eval/                           metrics.json, per_image.csv, confusion_matrix*.png, …"

# ruff (style, and the torch-boundary import ban), import-linter (layers, torch boundary), mypy.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
