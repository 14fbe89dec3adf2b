# The README's commands: `make run` (the demo) and `make test` (everything CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_URI := test://$(CURDIR)/config/demo-node.xml
# The demo has no Collector to push to; `make run OTEL_METRICS_EXPORTER=prometheus,otlp` adds OTLP.
OTEL_METRICS_EXPORTER ?= prometheus
export OTEL_METRICS_EXPORTER

.PHONY: run test lint typecheck pytest bench docs system-deps system-deps-test clean

run: system-deps $(VENV)/.run-installed
	$(BIN)/otel-vmi-hv run --source libvirt --libvirt-uri "$(DEMO_URI)"

test: system-deps-test $(VENV)/.dev-installed lint typecheck pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

docs: $(VENV)/.run-installed
	$(BIN)/python scripts/update_readme_config.py

bench: system-deps-test $(VENV)/.dev-installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

system-deps:
	scripts/install-system-deps.sh run

system-deps-test:
	scripts/install-system-deps.sh test

$(VENV)/bin/pip:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(VENV)/bin/pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
