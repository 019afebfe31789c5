# retentiond — the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools run test test-fast lint clean bench bench-dispatch bench-ingress chaos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the dependency list changes.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP) tools

## Programs the tests and benchmarks drive from outside: wrk (load generator), promtool (alert rules),
## prometheus (a real server scraping a running daemon), nginx + openssl (the shipped reverse-proxy
## config, checked with a self-signed certificate), chromium (the console in a real browser).
TOOLS := wrk prometheus nginx-light openssl chromium
tools:
	@command -v wrk >/dev/null && command -v promtool >/dev/null && command -v prometheus >/dev/null \
	  && { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && command -v openssl >/dev/null \
	  && command -v chromium >/dev/null || \
	  (apt-get install -y $(TOOLS) || (apt-get update && apt-get install -y $(TOOLS)))

## Start the daemon on its embedded defaults (SQLite under ./var, in-process broker, console provider).
run: $(STAMP)
	mkdir -p var
	$(BIN)/retentiond migrate
	$(BIN)/retentiond run

## The whole suite, against the real RabbitMQ and PostgreSQL (started if installed but stopped).
test: $(STAMP) tools
	$(BIN)/python -m pytest

## Everything but the slow tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

lint: $(STAMP)
	$(BIN)/ruff check ground db engine actors daemon ops tests
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var build *.egg-info

## Every benchmark next to its anchor (dispatch, leads, ingress, rate limit, isolation, scale, burst):
## about 15 minutes.
## Prints a markdown report; JSON results under var/bench/. QUICK=1 for small sizes.
bench: $(STAMP) tools
	$(BIN)/python ops/bench/suite.py $${QUICK:+--quick} $${ONLY:+--only $$ONLY}

## Dispatch benchmark: 50,000 sends through RabbitMQ at the simulator, next to bare Dramatiq.
bench-dispatch: $(STAMP)
	$(BIN)/python ops/bench/dispatch.py --sends $${SENDS:-50000} --db $${DB:-both}

## Ingress benchmark: signed webhooks at 64 connections for 20 s (wrk), next to bare aiohttp.
bench-ingress: $(STAMP) tools
	$(BIN)/python ops/bench/ingress.py --db $${DB:-postgres}

## The fault suite: real daemons, faults through a TCP proxy (broker and database outages, webhooks
## during a database cut, SIGTERM, kill -9, two daemons, a deleted or purged queue, SQLite on a full
## disk; that one mounts a tmpfs, so root): about 6 minutes. Markdown report; JSON under var/chaos/.
## QUICK=1 for 100 leads and 4 s faults; ONLY=broker_outage,kill9 for some scenarios.
chaos: $(STAMP)
	$(BIN)/python ops/chaos/suite.py $${QUICK:+--quick} $${ONLY:+--only $$ONLY}
