# lora-lab: `make run` runs the course, `make test` tests it. Both install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
SITE_STAMP := $(VENV)/.installed-site
NOTEBOOK_SOURCES := $(wildcard notebooks/[0-9][0-9]_*.py)

.PHONY: site site-test setup run test lint sync check-sync pytest notebook-tests outcomes-other-isa nbtest t4-rehearsal gpu-check t4-plan clean colab-links colab-check colab-check-install colab-twin exercises figures bench gguf-tools mutants

# Bytecode: pip installs without compiling every file up front (--no-compile), and Python caches each module
# the first time it is imported, so only what runs is compiled. That needs the bytecode cache on: some machines
# (this course's CI among them) set PYTHONDONTWRITEBYTECODE, under which every process would recompile torch.
export PYTHONDONTWRITEBYTECODE :=
PIP_INSTALL := $(BIN)/python -m pip install -q --no-compile

# Create the virtual environment and install the pinned stack (torch pinned: a bare
# `torch` would pull a multi-GB CUDA build) plus this package in editable mode.
$(STAMP): requirements.txt requirements-model.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps -r requirements-model.txt
	$(PIP_INSTALL) --no-deps -e .
	touch $(STAMP)

# What tests and tooling add (requirements-dev.txt: pytest, ruff, jupytext, JupyterLab, Playwright).
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $(DEV_STAMP)

# What `make site` adds (requirements-site.txt: Sphinx, myst-nb, the furo theme).
$(SITE_STAMP): $(DEV_STAMP) requirements-site.txt
	$(PIP_INSTALL) -r requirements-site.txt
	touch $(SITE_STAMP)

setup: $(STAMP)

# Execute every notebook in order (cpu profile unless a GPU is present) into build/notebooks/.
run: $(STAMP)
	$(BIN)/python -m lora_lab.tooling.course run

test: $(DEV_STAMP) lint check-sync gguf-tools pytest notebook-tests site-test outcomes-other-isa

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(wildcard src tests notebooks benchmarks colab)

# Re-sync every pair from its .py source and fail if anything changed or is missing.
check-sync: $(DEV_STAMP)
	touch $(NOTEBOOK_SOURCES)
	$(BIN)/jupytext --quiet --sync $(NOTEBOOK_SOURCES)
	$(BIN)/python -m lora_lab.tooling.course strip
	$(BIN)/python -m lora_lab.tooling.course check
	$(BIN)/python -m lora_lab.tooling.course check-learners
	git diff --exit-code --stat -- notebooks

# Two workers (pytest-xdist), each taking whole test files, with one torch thread each: most tests are
# small models, imports and kernels, so two at once finish in about 4 minutes instead of 6 on 2 cores.
PYTEST_WORKERS ?= 2
pytest: $(DEV_STAMP) gguf-tools
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 \
	  -m "not flagship and not site" tests

# The outcomes the lessons state (pytest -m outcome: specialists' bars, the cpu flagship's gain, GGUF agreement)
# again under another CPU instruction set, with fresh result caches: AVX2 on a CPU with AVX-512, else the
# baseline without AVX. Floating-point results differ between instruction sets; the outcomes must not.
OTHER_ISA := $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null \
  && echo ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
  || echo ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41)
outcomes-other-isa: $(DEV_STAMP) gguf-tools
	$(BIN)/python -m lora_lab.tooling.course fresh-cache $(CURDIR)/build/other-isa-cache
	env $(OTHER_ISA) LORA_LAB_CACHE=$(CURDIR)/build/other-isa-cache MPLBACKEND=Agg $(BIN)/python -m pytest -m outcome -rP \
	  -p no:cacheprovider tests

# The notebook runs one after the other: the cpu profile's SmolLM2 run in notebook 03 uses both cores,
# and a second process beside it would oversubscribe them (torch's threads then wait on each other).
# The t4 rehearsal runs in the Colab twin (Colab's Python and libraries), where learners run the t4 path.
# The twin installs Colab's stack (about 3 GB of wheels: downloads and disk, little CPU) while the notebooks run,
# then rehearses every notebook once they are done; its install output is printed after theirs.
notebook-tests: $(DEV_STAMP) gguf-tools
	mkdir -p build
	$(PYTHON) colab/twin.py --phase install > build/colab-twin-install.out 2>&1 & twin=$$!; \
	  $(MAKE) --no-print-directory nbtest; notebooks=$$?; \
	  wait $$twin; installed=$$?; cat build/colab-twin-install.out; \
	  test $$notebooks -eq 0 && test $$installed -eq 0
	$(PYTHON) colab/twin.py --phase rehearse

# Every lesson executed top to bottom on this machine's profile into build/notebooks/ (outputs kept: the site
# renders them); one line per notebook with its time, the failing cell's traceback, non-zero exit if any failed.
nbtest: $(DEV_STAMP) gguf-tools
	$(BIN)/python -m lora_lab.tooling.course run

# The course as a website in build/site/ (lora_lab/tooling/site.py): the lessons as nbtest executed them, the
# docs, and the VRAM calculator running the course's estimator in the browser (Pyodide from npm, pinned).
site: $(SITE_STAMP)
	$(BIN)/python -m lora_lab.tooling.site build

# The site's checks (tests/test_site.py): every lesson page with outputs and a figure, the answer key off the
# learner pages, and the calculator in headless Chromium, offline, equal to Python's estimate to the byte.
site-test: site
	MPLBACKEND=Agg $(BIN)/python -m pytest -m site -rP -p no:cacheprovider tests/test_site.py

# Every notebook's t4 path on this CPU (LORA_LAB_PROFILE=t4 LORA_LAB_REHEARSAL=1): the t4 settings and
# decisions with a scaled-down random Qwen2 and local SQL/GSM8K rows; executed copies in build/rehearsal/.
t4-rehearsal: $(STAMP)
	$(BIN)/python -m lora_lab.tooling.course t4-rehearsal

# Every training run of every notebook as a Colab T4 plans it (estimator at full size), as JSON lines.
t4-plan: $(STAMP)
	$(BIN)/python -m lora_lab.tooling.course t4-plan --json

# On a CUDA machine (no Hub access needed): real training steps of the shipped presets at full depth with
# random weights against the estimator, and the t4 rehearsal at Qwen2.5-1.5B size under a 14.74 GiB cap.
# Writes benchmarks/results/gpu_check_<gpu>.csv. Exits 2 without a CUDA GPU.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# After editing a notebooks/NN_topic.py: regenerate its .ipynb twin, without outputs, and the
# learner notebooks and answer key generated from it.
sync: $(DEV_STAMP)
	$(BIN)/jupytext --quiet --sync $(NOTEBOOK_SOURCES)
	$(BIN)/python -m lora_lab.tooling.course strip
	$(BIN)/python -m lora_lab.tooling.course exercises

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

# Point colab/REPO and colab/REF (default main), every badge and every Colab install cell (notebook sources,
# their .ipynb twins, learner copies, README) at REPO=owner/name and REF=branch-or-tag. Plain python3 and
# its standard library: works in a fresh clone, before (or without) `make setup`.
# REPO and REF reach Python through the environment, never through shell text (a quote in them stays text).
colab-links: export LORA_LAB_SET_REPO = $(REPO)
colab-links: export LORA_LAB_SET_REF = $(REF)
colab-links:
	$(PYTHON) src/lora_lab/tooling/colab.py set-repo --from-environment

# Every badge and install cell against colab/REPO and colab/REF (ONLINE=1: also what GitHub serves). No install.
colab-check:
	$(PYTHON) src/lora_lab/tooling/colab.py check $(if $(ONLINE),--online)

# Colab's install step must leave Colab's own torch and numpy alone: a fresh virtualenv with stand-ins of
# Colab's torch and numpy (metadata only, versions from colab/pip-freeze.gpu.txt), then pip's resolver plans
# colab/requirements.txt plus this package there; fails if the plan touches torch or numpy. Needs the
# package registry (CI calls it).
colab-check-install: $(STAMP)
	$(BIN)/python colab/check_install.py

# Colab's own stack here (colab/twin.py): Python 3.13 with the versions of colab/pip-freeze.gpu.txt, the
# notebooks' install cell, then the t4 rehearsal of every notebook and the widget tests in it. Plain python3
# drives it; needs Python 3.13 (COLAB_PYTHON, python3.13 on PATH, or pyenv's) and the package registry.
colab-twin:
	$(PYTHON) colab/twin.py

# Learner notebooks (notebooks/learners/NN_topic.ipynb: each solution cell replaced by a placeholder)
# and docs/answer-key.md, generated from the lessons; committed, and `check-sync` fails when they are stale.
exercises: $(DEV_STAMP)
	$(BIN)/python -m lora_lab.tooling.course exercises

# Every figure of the course as PNG and SVG into build/figures/ (runs the notebooks).
figures: $(STAMP)
	$(BIN)/python -m lora_lab.tooling.course figures

# Plant each bug of benchmarks/mutants.py alone in a copy of the package and run the tests that should catch
# it; writes benchmarks/results/mutants.md (a few minutes; not part of `make test`).
mutants: $(DEV_STAMP)
	$(BIN)/python benchmarks/mutants.py

# The VRAM estimator against measured training steps; writes benchmarks/results/vram_accuracy_cpu.csv.
bench: $(STAMP)
	$(BIN)/python benchmarks/vram_accuracy.py

# Notebook 06's tools, pinned and cached under $$LORA_LAB_CACHE/export (~/.cache/lora_lab/export):
# llama.cpp's GGUF converters from the llama-cpp-python sdist (PyPI, nothing compiled) and
# node-llama-cpp's prebuilt CPU llama.cpp (npm). Needs node >= 20 and npm.
gguf-tools: $(STAMP)
	$(BIN)/python -m lora_lab.experiments.export tools
