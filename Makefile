# celerydiag: `make test` sets everything up on a fresh machine (venv, Python and Debian packages,
# local services) and runs the unit and integration tests against real services.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install services system-packages test test-unit test-integration test-scenarios lint demo bench native clean-native clean

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

# Optional: capture's hot path compiled with mypyc, in place (pure Python stays the default and the
# fallback; bench/capture_vs_tshark.py says which one it timed). Rebuild after editing those modules.
native: install
	$(PY) scripts/build_native.py

clean-native:
	rm -f celerydiag/network/capture/*.so
	rm -rf build/native build/lib.*

clean: clean-native
	rm -rf $(VENV) .pytest_cache build *.egg-info
