# virtmesh: `make run` and `make test` set up everything they need on Debian 12.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STATE ?= .virtmesh
GEN := protos/gen/python
PROTOS := $(shell find protos/virtmesh -name '*.proto')
SYSTEM_STAMP := $(VENV)/.system-deps
PY_STAMP := $(VENV)/.python-deps
# The Node client's packages (package-lock.json), its generator (ts-proto) and tsc
NODE_STAMP := clients/node/node_modules/.installed
GUEST := $(STATE)/guest/vmlinuz $(STATE)/guest/initrd.img
PYTEST_ARGS ?=
#: the CLI context `make run` writes for its mesh (`virtmesh config get-contexts`); empty: none
CONTEXT ?= dev

.PHONY: help deps run test lint gen gen-check api-coverage guest bench fuzz image clean

help:
	@echo "make run    install what is missing, build, and run the mesh (Ctrl-C stops it)"
	@echo "make test   install what is missing and run the whole test suite"
	@echo "make lint   buf lint + format check, generated-code check, ruff, mypy"
	@echo "make gen    regenerate Python, Go (and Node) code from protos/"
	@echo "make api-coverage  rewrite docs/api-coverage.md: each libvirt function's RPC"
	@echo "make bench  libvirtd vs compute service vs gateway (one domain, bulk lists and"
	@echo "            stats, events), scrapes, volume streaming,"
	@echo "            a VNC viewer's frame latency through the gateway, cold vs warm"
	@echo "            starts of virtmesh-run and compute: figures"
	@echo "make fuzz   COUNT mutated documents (default 20000, SEED=n) on every define path"
	@echo "make image  build the container image from deploy/Containerfile (IMAGE=$(IMAGE))"

# System packages: re-checked when the script changes (dpkg-query is quick anyway).
$(SYSTEM_STAMP): tools/install-deps.sh
	tools/install-deps.sh
	@mkdir -p $(VENV) && touch $@

$(PY_STAMP): $(SYSTEM_STAMP) requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

$(NODE_STAMP): $(SYSTEM_STAMP) clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(PY_STAMP) $(NODE_STAMP)

gen: $(PY_STAMP) $(NODE_STAMP)
	tools/gen-protos.sh $(GEN)
	tools/gen-clients.sh

gen-check: $(PY_STAMP) $(NODE_STAMP)
	@tmp=$$(mktemp -d) && tools/gen-protos.sh $$tmp/python && tools/gen-clients.sh $$tmp && \
	  if diff -r -q -x __pycache__ $(GEN) $$tmp/python >/dev/null && \
	     diff -r -q clients/go/gen $$tmp/clients/go/gen >/dev/null && \
	     diff -r -q clients/node/src/gen $$tmp/clients/node/src/gen >/dev/null; then \
	    rm -rf $$tmp; echo "generated code is up to date"; \
	  else diff -r -x __pycache__ $(GEN) $$tmp/python | head -20; \
	       diff -r clients/go/gen $$tmp/clients/go/gen | head -20; \
	       diff -r clients/node/src/gen $$tmp/clients/node/src/gen | head -20; rm -rf $$tmp; \
	       echo "generated code is stale: run make gen and commit" >&2; exit 1; fi

# Which RPC reaches each libvirt function (libvirt-dev's API description, the RPCs'
# libvirt_functions options); make lint checks that the document is current.
api-coverage: $(PY_STAMP)
	$(PY) tools/api-coverage.py

lint: $(PY_STAMP) gen-check
	cd protos && ../$(VENV)/bin/buf lint
	cd protos && ../$(VENV)/bin/buf format --diff --exit-code
	@# The API is a public contract: no breaking change against what main has.
	if git rev-parse --verify -q main >/dev/null; then \
	  cd protos && ../$(VENV)/bin/buf breaking --against '../.git#branch=main,subdir=protos'; fi
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services gateway client guest bench tests tools virtmesh_run
	$(PY) tools/check-manifests.py
	$(PY) tools/api-coverage.py --check

$(GUEST): guest/build-guest.sh $(SYSTEM_STAMP)
	guest/build-guest.sh $(STATE)/guest

guest: $(GUEST)

run: $(PY_STAMP) $(GUEST)
	$(PY) -m services.supervisor --state-dir $(STATE) $(if $(CONTEXT),--context $(CONTEXT)) \
	  $(if $(filter-out 0,$(KEEP_GUESTS)),--keep-guests) $(if $(VIRT_TYPE),--virt-type $(VIRT_TYPE))

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
test: $(PY_STAMP) $(NODE_STAMP) $(GUEST)
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	  if [ $$status = 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	  exit $$status

# The fuzz run CI does (2,000 inputs, tests/test_hostile_input.py), as long as asked.
COUNT ?= 20000
SEED ?= $(shell date +%s)
fuzz: $(PY_STAMP)
	VIRTMESH_FUZZ_COUNT=$(COUNT) VIRTMESH_FUZZ_SEED=$(SEED) $(PY) -m pytest -q \
	  tests/test_hostile_input.py -k fuzz

bench: $(PY_STAMP) $(GUEST)
	$(PY) -m bench.bench --out bench-results.json
	$(PY) -m bench.lists --out bench-lists.json
	$(PY) -m bench.stats --out bench-stats.json
	$(PY) -m bench.events --out bench-events.json
	$(PY) -m bench.gateway_floor --out bench-gateway-floor.json
	$(PY) -m bench.scrape
	$(PY) -m bench.volume_stream --sizes 64,512
	$(PY) -m bench.graphics
	$(PY) -m bench.service_floor
	$(PY) -m bench.cold_start --state-dir $(STATE) --repeat 3 --out bench-cold-start.json

# The container image; needs a working builder (a docker client alone, without an
# engine, is not one). Fails, rather than pretending, when there is none. The
# default name and tag are the ones deploy/k8s names (the version in pyproject.toml;
# tests/test_k8s_manifests.py keeps them equal): `make image IMAGE=REGISTRY/virtmesh:TAG`
# for a registry, and kustomize `images:` to point the manifests at it.
IMAGE ?= virtmesh:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	@if docker info >/dev/null 2>&1; then build="docker build"; \
	elif podman info >/dev/null 2>&1; then build="podman build"; \
	elif buildah info >/dev/null 2>&1; then build="buildah bud"; \
	else echo "make image: no container builder available (docker with a running engine," \
	  "podman or buildah); nothing was built" >&2; exit 1; fi; \
	echo "$$build -f deploy/Containerfile -t $(IMAGE) ."; \
	$$build -f deploy/Containerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache clients/node/node_modules
