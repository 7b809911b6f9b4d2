# celerydiag: `make test` sets everything up on a fresh machine (venv, Python and Debian packages,
# local services) and runs the unit and integration tests against real services.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install services system-packages test test-unit test-integration test-scenarios test-matrix matrix-table lint demo bench native clean-native clean

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

# One virtualenv per pair under .matrix/ (gitignored; rebuilt only when pyproject.toml changes),
# from the Pythons pyenv keeps in $(pyenv root)/versions; a missing one is reported SKIPPED with why.
# The pairs (scripts/test-matrix.py PAIRS) are the diagonal 5.3/3.9, 5.4/3.10, 5.5/3.11, 5.6/3.12,
# 5.7/3.13: every Celery we claim and every Python we claim at least once, in five runs instead of 25,
# oldest with oldest (the pair most likely to break) and newest with newest; Celery 5.7 needs
# Python >= 3.10 (on 3.9 pip resolves 5.6.3). Each runs tests/unit plus the probe-level integration
# tests (scripts/test-matrix.py INTEGRATION), writes .matrix/last-run.json; `make matrix-table`
# renders README's "Supported versions" table from it.
test-matrix: system-packages services
	python3 scripts/test-matrix.py

matrix-table:
	@python3 scripts/matrix-table.py

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
