# Benchmarks only here; see bench/run.py (`make bench BENCH_ARGS=--quick` for
# a smoke test).  TWISTD: the twistd of a venv with sharqd's deps; the bench
# runs this source tree's sharqd through it (PYTHONPATH).
PYTHON ?= python3
TWISTD ?= $(firstword $(wildcard $(CURDIR)/venv/bin/twistd $(CURDIR)/.venv/bin/twistd /work/venv/bin/twistd) twistd)
BENCH_ARGS ?=

.PHONY: bench
bench:
	$(PYTHON) bench/run.py --twistd $(TWISTD) $(BENCH_ARGS)
