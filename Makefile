# Quick start: `make demo` and `make test` on a fresh machine (they set everything up).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck coverage unit bench clean deps-net bench-wan

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
	@command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

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

unit: setup deps-net
	$(BIN)/python -m pytest

test: lint typecheck coverage unit

bench: setup
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/relay.py

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
