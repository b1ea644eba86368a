# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint typecheck unit bench clean venv test-deps

venv: $(STAMP)

# torch first, pinned: this pin is the CPU build available locally; any other spec may
# pull a multi-GB CUDA build. Then the package with its extras.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[torch,nvml,dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf memspan-out
	$(PY) examples/quickstart.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src/memspan

# chromium and prometheus, from Debian's packages, for the browser and scrape tests
test-deps:
	./scripts/install-test-deps.sh

unit: $(STAMP) test-deps
	$(VENV)/bin/pytest -q

test: lint typecheck unit

# Stormlog 0.4.3 (the phase runtime memspan replaces) is a benchmark-only dependency
bench: $(STAMP)
	$(PIP) install --quiet -e '.[torch,nvml,dev,bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .venv-sdk-oldest memspan-out oom_dumps .memory_audits .pytest_cache .mypy_cache .ruff_cache
