# celerydiag: `make test` sets everything up on a fresh machine (venv, Python and Debian packages,
# local services) and runs the unit and integration tests against real services.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install services system-packages test test-unit test-integration test-scenarios lint demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-packages:
	@bash scripts/system-packages.sh

services:
	@bash scripts/services.sh

test: install system-packages services
	$(PY) -m pytest tests/unit tests/integration tests/scenarios -m "not scenario_slow"

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install system-packages services
	$(PY) -m pytest tests/integration

test-scenarios: install system-packages services
	$(PY) -m pytest tests/scenarios

lint: install
	$(VENV)/bin/ruff check celerydiag tests bench fixtures
	$(VENV)/bin/mypy

demo: install
	$(VENV)/bin/celerydiag doctor

bench: install services
	$(PY) bench/doctor_wall.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
