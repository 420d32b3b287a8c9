PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FILES  := $(VENV)/.installed-files
PACKAGES := protocol broker client worker cli dashboard

.PHONY: all setup python-version test lint typecheck pytest demo bench clean FORCE

all: test

setup: $(STAMP)

python-version:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "Conveyor needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	       "Run make with PYTHON=python3.11 (or newer)." >&2; exit 1; }

# The strict editable install links every module into build/, under its conveyor.* name; the
# list of files is a prerequisite so that adding or removing a module installs the links anew.
# The dashboard's templates and static files are package data, linked the same way.
$(FILES): FORCE | python-version
	@mkdir -p $(VENV)
	@find $(PACKAGES) -name '*.py' -o -name py.typed \
	    -o \( -path '*/templates/*' -o -path '*/static/*' \) -type f | sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(STAMP): pyproject.toml $(FILES) | python-version
	@echo "Installing Conveyor and its test tools into $(VENV) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
	    --config-settings editable_mode=strict -e '.[test,dashboard]'
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# Each test directory has a conftest.py and support modules that its tests import by bare name
# (pytest puts the directory on sys.path): mypy checks each directory on its own, the same way.
TEST_DIRS := $(sort $(dir $(wildcard tests/*/*.py)))

typecheck: $(STAMP)
	$(BIN)/mypy -p conveyor.protocol -p conveyor.broker -p conveyor.client -p conveyor.worker \
	    -p conveyor.cli -p conveyor.dashboard
	$(BIN)/mypy examples bench
	$(BIN)/mypy tests/*.py
	@for dir in $(TEST_DIRS); do \
	  echo "MYPYPATH=tests:$$dir $(BIN)/mypy $$dir"; \
	  MYPYPATH=tests:$$dir $(BIN)/mypy --cache-dir .mypy_cache/$$dir $$dir || exit 1; \
	done

pytest: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python bench/spread.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/throughput.py --policies always everysec no
	$(BIN)/python bench/durability.py
	$(BIN)/python bench/add_file.py
	$(BIN)/python bench/restart_memory.py
	$(BIN)/python bench/stats.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/rate_limit.py
	$(BIN)/python bench/schedule.py
	$(BIN)/python bench/flows.py
	$(BIN)/python bench/groups.py

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache .hypothesis
