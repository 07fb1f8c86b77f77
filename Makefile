# Each target builds its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch by default (this wheel is on CPU machines' disk). GPU users pass the CUDA
# wheel index from PyTorch's install page: make setup TORCH_INDEX="--index-url <that index>"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_DIR ?= demo-out

.PHONY: setup test demo bench clean

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.done

test: setup
	@# CI only: Debian's chromium for the browser tests (skipped where it is absent)
	@if [ -n "$$CI" ] && ! command -v chromium >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "no chromium: browser tests skipped"; fi
	@# one process per core (pytest-xdist), one torch thread each: the suite is mostly single-threaded
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

demo: setup
	$(VENV)/bin/foalnet demo --out $(DEMO_DIR)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_DIR)
