# Quick start: `make demo` and `make test` on a fresh machine (they set everything up).
SHELL := /bin/bash
# apt never asks questions (fresh CI machines have no terminal)
export DEBIAN_FRONTEND := noninteractive
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck coverage unit bench clean deps-dicom deps-pacs deps-browser deps-net bench-wan bench-browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
	@command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# dcmtk makes the compressed DICOM fixtures of tests/peer/test_preview.py (dcmcrle, dcmcjpls,
# dcmcjpeg); the tests fail loudly without it
deps-dicom:
	@command -v dcmcjpls >/dev/null || { apt-get update -qq && apt-get install -y -qq dcmtk; }
	@command -v dcmcrle >/dev/null && command -v dcmcjpeg >/dev/null

demo: setup
	$(BIN)/python -m peer.demo

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy peer signaling relay tui tests bench

coverage: setup
	$(BIN)/python -m pytest tests/proto -q --cov=peer/proto --cov-branch \
		--cov-report=term-missing:skip-covered --cov-fail-under=100

# PACS bridge tests: dcmtk (storescu, storescp, echoscu, dcmcjpls, dcmcrle) and Orthanc.
deps-pacs:
	@command -v storescu >/dev/null && command -v Orthanc >/dev/null || { \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
			--no-install-recommends dcmtk orthanc; }

unit: setup deps-dicom deps-pacs deps-browser deps-net
	$(BIN)/python -m pytest

test: lint typecheck coverage unit

bench: setup
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/deid.py

# The browser receive page (README "Receiving in a browser"): Debian's chromium for the
# Playwright tests, node + npm, the page's npm packages (package-lock.json) and its build.
WEB := signaling/web
deps-browser: $(WEB)/dist/.built

bench-browser: setup deps-browser
	$(BIN)/python bench/browser.py

$(WEB)/dist/.built: $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/build.mjs $(wildcard $(WEB)/src/*)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error && npm run build
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The test network (docs/netlab.md): namespaces, nftables NAT, coturn, the wanemu WAN emulator.
WANEMU := tests/netlab/build/wanemu
NET_TOOLS := nft:nftables turnserver:coturn ping:iputils-ping ss:iproute2 ip:iproute2 gcc:gcc
$(WANEMU): tests/netlab/wanemu.c
	@command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc libc6-dev; }
	@mkdir -p $(@D)
	gcc -O2 -Wall -Wextra -Werror -o $@ $<

deps-net: setup $(WANEMU)
	@missing=""; for t in $(NET_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi
	@for t in $(NET_TOOLS); do command -v $${t%%:*} >/dev/null || { echo "deps-net: $${t%%:*} missing after install" >&2; exit 1; }; done
	@test -c /dev/net/tun || { echo "deps-net: /dev/net/tun missing (no TUN support)" >&2; exit 1; }

# magic-wormhole, its mailbox server and transit relay: the reference in bench/wan.py (own venv)
WH_VENV := .venv-wormhole
$(WH_VENV)/.installed: bench/wormhole-requirements.txt
	$(PYTHON) -m venv $(WH_VENV)
	$(WH_VENV)/bin/pip install --quiet -r $<
	touch $@

bench-wan: deps-net $(WH_VENV)/.installed
	$(BIN)/python bench/wan.py
