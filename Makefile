# Quick start: `make demo` and `make test` on a fresh machine (they set everything up).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck coverage unit bench clean deps-browser bench-browser

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

unit: setup deps-browser
	$(BIN)/python -m pytest

test: lint typecheck coverage unit

bench: setup
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/relay.py

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
