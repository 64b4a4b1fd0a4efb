# telewire — two commands on a fresh machine with Python >= 3.11 and make:
#   make demo   set up .venv, then run one whole simulated call on embedded defaults
#   make test   set up .venv, then run every test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml plugins/twilio/pyproject.toml plugins/bandwidth/pyproject.toml plugins/sip_bridge/pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("telewire needs Python >= 3.11, this is " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,speedups]' -e plugins/twilio -e plugins/bandwidth -e plugins/sip_bridge
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/telewire demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/recorder_rss.py --minutes 30 --json bench/results/recorder-rss.json

clean:
	rm -rf $(VENV) build *.egg-info core/*.egg-info plugins/*/*.egg-info
