# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv when it is
# missing (quick when it is present: a stamp file remembers what was installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ppu-installed
# The local CPU build on lab laptops and CI; elsewhere: make TORCH_SPEC=torch (or your CUDA wheel).
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest bench clean env browser-deps postgres-deps

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "-> installing PPU into $(VENV) (first time only: a few minutes)"
	@# pip's chatter goes to a log; it is shown only when a step fails.
	@$(PIP) install --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PIP) install "$(TORCH_SPEC)" >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PIP) install -c constraints.txt -e '.[test,epics,tiled,ray]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PY) -c "import torch, ppu, bluesky, ophyd, prefect, botorch, zmq, caproto, tiled.client, ray" || (echo "install incomplete; see $(VENV)/install.log" && exit 1)
	@touch $(STAMP)
	@echo "-> $(VENV) ready"

demo: $(STAMP)
	$(VENV)/bin/ppu campaign run campaigns/demo.yaml --run-dir runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ppu drivers simulators flows tests benchmarks
	$(PY) tests/lint_imports.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The store, restart and exactly-once tests run on SQLite and on PostgreSQL: tests/pgserver.py
# starts a throwaway server (initdb + pg_ctl in a temp folder, unix socket only), exports
# PPU_TEST_POSTGRES_URL for pytest and stops it at the end.
pytest: $(STAMP) postgres-deps
	@# Compiled once here: where PYTHONDONTWRITEBYTECODE is set (as on CI images), every process a test
	@# starts (orchestrators, workers, IOCs, Ray actors) would compile PPU's modules again.
	@$(PY) -m compileall -q -j 0 ppu drivers simulators flows tests > /dev/null
	$(PY) tests/pgserver.py $(VENV)/bin/pytest -q

# The dashboard's browser tests drive Debian's chromium (playwright comes with the test extra; it
# never downloads a browser). Installed when missing and we may; otherwise those tests skip.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "-> installing chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			> /tmp/ppu-chromium-install.log 2>&1 || echo "chromium install failed (see /tmp/ppu-chromium-install.log): browser tests will skip"; \
	else echo "no /usr/bin/chromium and no root to install it: browser tests will skip"; fi

# Debian's PostgreSQL server for the store tests, installed when missing and we may (as chromium
# above); otherwise the PostgreSQL variants skip, saying why.
postgres-deps:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl > /dev/null 2>&1 || command -v pg_ctl > /dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "-> installing PostgreSQL for the store tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
			> /tmp/ppu-postgresql-install.log 2>&1 || echo "PostgreSQL install failed (see /tmp/ppu-postgresql-install.log): its store tests will skip"; \
	else echo "no PostgreSQL server and no root to install it: the PostgreSQL store tests will skip"; fi

test: lint typecheck browser-deps postgres-deps pytest

bench: $(STAMP)
	for b in benchmarks/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
