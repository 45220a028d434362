# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv and installs what it needs on its own.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LINTED := $(wildcard src tests examples benchmarks)
STAMP := $(VENV)/.installed
TSC := $(VENV)/node/node_modules/.bin/tsc
HOST ?= 127.0.0.1
PORT ?= 8000
APT_GET := $(shell command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo) apt-get

.PHONY: demo test test-fast test-slow lint typecheck bench compare e2e system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[redis,prometheus,examples,dev,bench]'
	touch $(STAMP)

# TypeScript's checker, for the JSDoc types of the browser client (from npm).
$(TSC): $(STAMP)
	npm install --prefix $(VENV)/node --no-audit --no-fund --silent typescript@5

# Debian packages the real-component tests use: a Redis server and a browser.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $$missing; \
	fi

demo: $(STAMP)
	@$(BIN)/python examples/asgi_app.py --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

test: $(STAMP) $(TSC) system-deps lint typecheck
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow and not browser'

test-slow: $(STAMP) $(TSC) system-deps
	$(BIN)/python -m pytest -q -m 'slow or browser'

# End to end over real sockets: uvicorn servers, WebSocket client processes.
e2e: $(STAMP)
	$(BIN)/python benchmarks/e2e.py

bench: $(STAMP) system-deps
	$(BIN)/python benchmarks/core.py
	$(BIN)/python benchmarks/fanout.py
	$(BIN)/python benchmarks/backplane.py

# Every alternative side by side; the full run takes a while (Channels is slow).
compare: $(STAMP)
	$(BIN)/python benchmarks/compare.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
