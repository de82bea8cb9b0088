# `make run` (serve on http://127.0.0.1:8000 with SQLite + media/), `make test` (the whole suite, what CI runs)
# and `make test-fast` (the unit and API tiers, no slow or e2e tests: under 2 minutes).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | sha256sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast install system-deps schema clean

# Tests compare renders with dcmtk and drive the Debian chromium; install them when missing (needs root).
SYSTEM_TOOLS := dcmj2pnm:dcmtk chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing fonts-dejavu-core; \
		else echo "missing system packages:$$missing (apt-get install them; the tests that need them will fail)"; fi; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# DEBUG is on only here (a developer's own machine); production sets DJANGO_SECRET_KEY and leaves it off.
run: export DJANGO_DEBUG ?= 1
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin
	@echo "Serving on http://$(HOST):$(PORT)/  (API docs: /api/docs/, admin: /admin/)"
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# Tests use their own throwaway key; DATABASE_URL picks SQLite (default) or PostgreSQL.
test: export DJANGO_SECRET_KEY ?= test-only-secret-key-not-for-production
test: install system-deps
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast loop: markers `slow` and `e2e` (browser, live servers, dcmtk peers, fuzzers, whole corpora) are
# applied in studies/tests/conftest.py; no chromium or dcmtk needed.
test-fast: export DJANGO_SECRET_KEY ?= test-only-secret-key-not-for-production
test-fast: install
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

schema: install
	DJANGO_SECRET_KEY=schema $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null

clean:
	rm -rf $(VENV) .pytest_cache
