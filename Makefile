# telewire — two commands on a fresh machine with Python >= 3.11 and make:
#   make demo        set up .venv, then run one whole simulated call on embedded defaults
#   make test        set up .venv (the latest allowed dependencies), then run every test
#   make test-deps   run every test on the lowest allowed dependencies (.venv-lowest), then on
#                    the latest (.venv): the lower bounds in the metadata are ones the tests pass on
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOWEST := .venv-lowest
LPY    := $(LOWEST)/bin/python
LSTAMP := $(LOWEST)/.installed
# the core with every extra the tests use, and the carriers
PACKAGES := -e '.[dev,s3,speedups,control]' -e plugins/twilio -e plugins/bandwidth -e plugins/sip_bridge
METADATA := pyproject.toml plugins/twilio/pyproject.toml plugins/bandwidth/pyproject.toml plugins/sip_bridge/pyproject.toml
CHECK_PYTHON := $(PYTHON) -c 'import sys; sys.exit("telewire needs Python >= 3.11, this is " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'

.PHONY: demo test test-deps test-lowest bench soak install clean browser redis-server

$(STAMP): $(METADATA)
	$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PACKAGES)
	touch $(STAMP)

# Direct dependencies at the lowest version their specifiers allow (uv's "lowest-direct"
# resolution; pip has none), everything they pull in at its newest compatible version.
$(LSTAMP): $(METADATA)
	$(CHECK_PYTHON)
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LPY) -m pip install --quiet --upgrade pip 'uv>=0.5'
	$(LOWEST)/bin/uv pip install --quiet --python $(LPY) --resolution lowest-direct $(PACKAGES)
	touch $(LSTAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/telewire demo

# The operator page's test drives Debian's headless Chromium (tests/test_operator_page.py).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: the operator page's browser test will skip"

# The control plane's tests run against a real redis-server (Debian's package, tests/conftest.py).
redis-server:
	@command -v redis-server >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

test: $(STAMP) browser redis-server
	$(PY) -m pytest -q

# TELEWIRE_LOWEST_DEPS=1 makes tests/test_dependency_bounds.py check that each direct dependency
# installed is exactly its lower bound. Tests marked `slow` (long real-time or many-process
# scenarios whose dependency surfaces faster tests also use) run in `make test` only, so CI
# (both suites) stays inside its time budget.
test-lowest: $(LSTAMP) browser redis-server
	TELEWIRE_LOWEST_DEPS=1 $(LPY) -m pytest -q -m "not slow"

test-deps: test-lowest test

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/recorder_rss.py --minutes 30 --json bench/results/recorder-rss.json
	$(PY) bench/hostile.py --json bench/results/hostile.json

# 200 calls for 10 minutes on two workers and a real Redis (bench/soak.py); tests/test_soak.py
# runs a one-minute version with every make test.
soak: $(STAMP) redis-server
	$(PY) bench/soak.py $(SOAK_ARGS) --docs --json bench/results/soak.json

clean:
	rm -rf $(VENV) $(LOWEST) build *.egg-info core/*.egg-info plugins/*/*.egg-info
