# The project's entry points. `make help` lists them; the README explains the first two.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
NODE := harness/node
PYTEST := $(VENV)/bin/python -m pytest
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: help up down tools cluster-up cluster-down cluster-status venv lint \
        images test test-e2e test-real-node test-images test-unit test-chart test-integration clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

up: ## Bring the facility up: tools, images, a real-node cluster, login, chart (FACILITY_NODES=kwok: simulated)
	ci/up

down: ## Remove the facility, stop the local clusters (deletes all their data) and the image builder
	ci/cluster down
	$(TEST_CLUSTER) ci/cluster down
	FACILITY_CLUSTER_DIR=$(CURDIR)/.cluster-e2e ci/cluster down
	ci/images down

tools: ## Build the pinned tools from their Go modules into ~/.cache/facility
	ci/tools

images: tools ## Build the container images offline (ci/images: Debian base, own Docker engine)
	ci/images build

cluster-up: tools ## Start the local Kubernetes cluster (ci/cluster)
	ci/cluster up

cluster-down: ## Stop the local cluster and remove its state
	ci/cluster down

cluster-status: ## Show the local cluster's components and nodes
	ci/cluster status

venv: $(VENV)/.installed $(NODE)/node_modules/.installed ## Python and Node environments with the pinned test dependencies

$(VENV)/.installed: pyproject.toml */pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
	  -e client -e hub_config -e operators -e harness -e .
	touch $@

# The OpenID provider, configurable-http-proxy and Playwright of the login tests.
$(NODE)/node_modules/.installed: $(NODE)/package-lock.json
	npm ci --prefix $(NODE) --no-audit --no-fund --loglevel=error
	touch $@

lint: venv tools ## ruff, shell syntax and shellcheck (if installed), helm lint --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# Every shell script, by name: the commands in ci/ and .ci/ (a file with no extension) and the
	# sourced ci/*.sh and ci/*.d/*.sh. shellcheck -x checks each with what it sources.
	@shopt -s nullglob; scripts=(); \
	for file in ci/* .ci/* ci/*.d/*.sh; do \
	  if [[ -f $$file && ( $$file == *.sh || $${file##*/} != *.* ) ]]; then scripts+=("$$file"); fi; done; \
	for script in "$${scripts[@]}"; do bash -n "$$script" || exit 1; done; \
	if command -v shellcheck >/dev/null; then shellcheck -x -S warning "$${scripts[@]}"; \
	  echo "shell: bash -n and shellcheck passed: $${scripts[*]}"; \
	else echo "shell: bash -n passed: $${scripts[*]} (no shellcheck: Debian's shellcheck adds it)"; fi
	helm lint --strict charts/facility

# The test layers' own local cluster (kwok nodes), so that `make test` runs beside `make up`'s
# facility (which keeps .cluster); the e2e layer then uses make up's cluster (tests/e2e).
TEST_CLUSTER := FACILITY_CLUSTER_DIR=$(CURDIR)/.cluster-test FACILITY_CLUSTER_PORT_BASE=18400 FACILITY_NODES=kwok

test: lint ## Run every test layer (starts the test layers' own local cluster, .cluster-test)
	$(TEST_CLUSTER) ci/cluster up
	$(TEST_CLUSTER) $(PYTEST) tests -m "not realnode and not images"

test-e2e: venv tools ## End-to-end: ci/up on a real-node cluster of its own, login, JupyterLab, upgrade, uninstall
	$(PYTEST) tests/e2e -m e2e

test-real-node: venv tools ## The real-node cluster mode (kubelet + containerd here; needs make images)
	$(PYTEST) tests -m realnode

test-images: venv images ## Smoke tests of the images (tests/images; builds them first)
	$(PYTEST) tests/images -m images

test-unit: venv ## Unit tests (pure Python, seconds)
	$(PYTEST) tests/unit

test-chart: venv tools ## Chart tests: lint, render, schema; API checks need cluster-up
	$(PYTEST) tests/chart

test-integration: venv tools ## Integration tests: tools, ci/cluster, real processes (most need cluster-up)
	$(PYTEST) tests/integration

.PHONY: values-schema
values-schema: venv ## Write the chart's values.schema.json and docs/values.md from values.schema.yaml
	$(VENV)/bin/python ci/values-schema.py

.PHONY: bench
bench: venv tools cluster-up ## Benchmarks, not tests (root): bench/<name>/report.json and report.png
	$(VENV)/bin/python bench/xcache/run.py
	$(VENV)/bin/python bench/dask_edge/run.py
	$(VENV)/bin/python bench/workers/run.py

.PHONY: bench-agc
bench-agc: venv ## The example analysis on make up's facility (after make up): bench/agc/report.json and .png
	$(VENV)/bin/python bench/agc/run.py

clean: ## Remove the virtualenv and tool links (the tool cache in ~/.cache stays)
	rm -rf $(VENV) .tools
