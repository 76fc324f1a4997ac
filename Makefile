# Two entry points: `make demo` (the main job) and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench overhead calibration clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[bench,test,triton]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m bench.demo

# Two workers: CI has two cores and every test runs single-threaded (tests/conftest.py); one file per worker.
# The 15 slowest tests are listed at the end (CI time is budgeted).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

overhead: $(STAMP)
	$(PY) -m bench.overhead

bench: $(STAMP)
	$(PY) -m bench.quality

# A reference model's calibration file (TeaCache / MagCache / MixCache / AdaCache constants) and its plot:
# `make calibration` (Wan), `make calibration MODEL=flux`.
MODEL ?= wan
calibration: $(STAMP)
	$(PY) -c "import sys, bench.profiling as p; sys.argv[1:] = p.profile_args('$(MODEL)'); p.main(sys.argv[1:])"

clean:
	rm -rf $(VENV) out
