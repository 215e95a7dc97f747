# poolmgr developer and quick-start targets.
#   make demo   set up a virtualenv and run the quick start on SQLite
#   make test   set up everything the tests need and run them all
#   make lint   ruff check, format check and mypy

VENV ?= .venv
PYTHON ?= python3
POOLMGR_REQUIRE_SERVERS ?= 1
POOLMGR_REQUIRE_LCMAPS ?= 1
export POOLMGR_REQUIRE_SERVERS POOLMGR_REQUIRE_LCMAPS

.PHONY: demo test lint benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" contrib/examples/quickstart.sh

test: $(VENV)/.installed
	scripts/test-setup
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check poolmgr tests migrations
	$(VENV)/bin/ruff format --check poolmgr tests migrations
	$(VENV)/bin/mypy poolmgr

benchmark: $(VENV)/.installed
	scripts/test-setup
	$(VENV)/bin/python tests/benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info demo
