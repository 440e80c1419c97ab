# The README's commands. Each target sets up its own virtual environment on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-lowest lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## MoCo v2 on the shipped CIFAR-10 sample: kNN before/after, Hub-ready folder in outputs/demo/final
	HF_HUB_OFFLINE=1 $(BIN)/python recipes/pretrain_moco.py --config recipes/configs/demo.yaml

# The default suite runs in one pytest-xdist worker per core, at most 4: most of a test's time is a recipe's
# subprocess importing torch, timm and transformers on one core (on a 2-core AMD EPYC: 7 min 18 s instead of about 13 min).
# `PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= auto
test: $(STAMP)  ## the default test suite (CPU, offline, a few minutes)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not hub" -n $(PYTEST_WORKERS) --maxprocesses 4

test-slow: $(STAMP)  ## the slow tests (multi-process runs, longer trainings)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "slow and not hub"

# The default suite on the lowest versions pyproject.toml allows (uv's lowest-direct resolution), in its own
# virtual environment: the check of the lower bounds. Downloads several GB (torch's CUDA wheels) once.
LOWEST := .venv-lowest
test-lowest:  ## the default suite on the lowest dependency versions allowed
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip uv
	$(LOWEST)/bin/uv pip compile --quiet --resolution lowest-direct --python $(LOWEST)/bin/python \
		pyproject.toml --extra dev -o $(LOWEST)/requirements.txt
	$(LOWEST)/bin/python -m pip install --quiet -r $(LOWEST)/requirements.txt
	$(LOWEST)/bin/python -m pip install --quiet --no-deps -e .
	HF_HUB_OFFLINE=1 $(LOWEST)/bin/python -m pytest -m "not slow and not hub" -n $(PYTEST_WORKERS) --maxprocesses 4

lint: $(STAMP)
	$(BIN)/ruff check sslhub sslhub_cli.py recipes tests bench scripts
	$(BIN)/ruff format --check sslhub sslhub_cli.py recipes tests bench scripts

format: $(STAMP)
	$(BIN)/ruff format sslhub sslhub_cli.py recipes tests bench scripts
	$(BIN)/ruff check --fix sslhub sslhub_cli.py recipes tests bench scripts

clean:
	rm -rf $(VENV) $(LOWEST) outputs .pytest_cache

.PHONY: bench gpu-check
bench: $(STAMP)  ## sslhub vs lightly (MoCo v2): bench/RESULTS.md, STEP_BREAKDOWN.md, TIME_TO_ACCURACY.md (about 1.5 h of a quiet machine); BENCH_ARGS=--quick for toy sizes
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)
	$(BIN)/python bench/step_breakdown.py $(BENCH_ARGS)
	$(BIN)/python bench/time_to_accuracy.py $(BENCH_ARGS)

gpu-check: $(STAMP)  ## on a GPU machine with PyPI, at most 10 minutes: bench/results_gpu.json (without PyPI: bench/gpu_kit.py)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	PYTHON=$(BIN)/python bash bench/gpu_check.sh
