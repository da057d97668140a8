# lora-lab: `make run` runs the course, `make test` tests it. Both install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOK_SOURCES := $(wildcard notebooks/[0-9][0-9]_*.py)

.PHONY: setup run test lint sync check-sync pytest nbtest clean colab-links exercises figures bench gguf-tools

# Create the virtual environment and install the pinned stack (torch pinned: a bare
# `torch` would pull a multi-GB CUDA build) plus this package in editable mode.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Execute every notebook in order (cpu profile unless a GPU is present) into build/notebooks/.
run: $(STAMP)
	$(BIN)/python -m lora_lab.course run

test: $(STAMP) lint check-sync gguf-tools pytest nbtest

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard src tests notebooks benchmarks)

# Re-sync every pair from its .py source and fail if anything changed or is missing.
check-sync: $(STAMP)
	touch $(NOTEBOOK_SOURCES)
	$(BIN)/jupytext --quiet --sync $(NOTEBOOK_SOURCES)
	$(BIN)/python -m lora_lab.course strip
	$(BIN)/python -m lora_lab.course check
	git diff --exit-code --stat -- notebooks

pytest: $(STAMP) gguf-tools
	MPLBACKEND=Agg $(BIN)/python -m pytest tests

nbtest: $(STAMP) gguf-tools
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 notebooks/[0-9][0-9]_*.ipynb

# After editing a notebooks/NN_topic.py: regenerate its .ipynb twin, without outputs.
sync: $(STAMP)
	$(BIN)/jupytext --quiet --sync $(NOTEBOOK_SOURCES)
	$(BIN)/python -m lora_lab.course strip

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

# Point colab/REPO, every badge and every Colab install cell at REPO=owner/name.
colab-links: $(STAMP)
	@test -n "$(REPO)" || (echo "usage: make colab-links REPO=owner/name" && exit 2)
	$(BIN)/python -m lora_lab.colab set-repo "$(REPO)"
	$(MAKE) sync

# Learner copies of every notebook, solutions removed, into build/learners/.
exercises: $(STAMP)
	$(BIN)/python -m lora_lab.course exercises

# Every figure of the course as PNG and SVG into build/figures/ (runs the notebooks).
figures: $(STAMP)
	$(BIN)/python -m lora_lab.course figures

# The VRAM estimator against measured training steps; writes benchmarks/results/vram_accuracy_cpu.csv.
bench: $(STAMP)
	$(BIN)/python benchmarks/vram_accuracy.py

# Notebook 06's tools, pinned and cached under $$LORA_LAB_CACHE/export (~/.cache/lora_lab/export):
# llama.cpp's GGUF converters from the llama-cpp-python sdist (PyPI, nothing compiled) and
# node-llama-cpp's prebuilt CPU llama.cpp (npm). Needs node >= 20 and npm.
gguf-tools: $(STAMP)
	$(BIN)/python -m lora_lab.export tools
