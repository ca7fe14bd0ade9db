.PHONY: run test bench bench-sidebyside-wrk bench-extensions bench-observability soak bench-instructions bench-redis-instructions bench-policy bench-cluster deb deb-check

# Set up and run sharqd against a local redis-server (see README).
run:
	./scripts/run-server.sh

# Set up and run the full test suite (see README).
test:
	./scripts/run-tests.sh

# Benchmarks (bench/README.md): sets up .venv and wrk, then drives this
# tree's sharqd (workers 1 and 2) and writes bench/RESULTS.md; then runs
# sharqd and the original SharQ Server side by side (bench/sidebyside.py,
# which builds the original's venv in .venv-original/ when missing) and
# adds that section to bench/RESULTS.md; then both side by side under wrk
# (bench/sidebyside_wrk.py, 3 runs: the "1/5 of the original's" floors);
# then the long-poll burst (1,000 waiters); last, bench/floors.py puts
# every floor of issue 10 with its measured value at the top of
# bench/RESULTS.md (figures: bench/RESULTS.json).
# `make bench BENCH_ARGS=--quick` for a smoke test.
BENCH_ARGS ?=
bench:
	./scripts/setup.sh wrk
	python3 bench/run.py --twistd $(CURDIR)/.venv/bin/twistd $(BENCH_ARGS)
	python3 bench/sidebyside.py --twistd $(CURDIR)/.venv/bin/twistd $(filter --quick,$(BENCH_ARGS))
	.venv/bin/python bench/sidebyside_wrk.py --twistd $(CURDIR)/.venv/bin/twistd --seconds 6 --runs 3 --save $(filter --quick,$(BENCH_ARGS))
	.venv/bin/python bench/longpoll.py --only-burst --bursts 5 --save $(filter --quick,$(BENCH_ARGS))
	python3 bench/floors.py

# Long-poll (1,000 waiting clients) and batch enqueue figures, printed; see
# bench/RESULTS-longpoll.md for a recorded run.
bench-extensions:
	./scripts/setup.sh
	.venv/bin/python bench/longpoll.py
	.venv/bin/python bench/batch_enqueue.py

# sharqd on one Redis vs a Redis Cluster of 1 and 3 shards (60 queue
# types), and the cost of [redis] wait_replicas; writes
# bench/RESULTS-cluster.md (about 3 minutes).
bench-cluster:
	./scripts/setup.sh wrk
	.venv/bin/python bench/cluster.py --twistd .venv/bin/twistd

# Redis time per dequeue with 1, 1,000 and 100,000 queues, half of them
# paused or at their max_active cap (bench/policy_scale.py); a few minutes.
# `make bench-policy POLICY_ARGS="--baseline main"` adds main's scripts.
POLICY_ARGS ?=
bench-policy:
	./scripts/setup.sh
	.venv/bin/python bench/policy_scale.py $(POLICY_ARGS)

# sharqd and the original side by side under wrk (32 connections): CPU
# per request of each (bench/sidebyside_wrk.py; about a minute).
bench-sidebyside-wrk:
	./scripts/setup.sh wrk
	.venv/bin/python bench/sidebyside_wrk.py --seconds 6

# Instructions per enqueue/dequeue/finish under callgrind: the same count
# on a busy machine, for before/after comparisons of CPU per request.
bench-instructions:
	./scripts/setup.sh valgrind
	.venv/bin/python bench/instructions.py --twistd .venv/bin/twistd

# Redis instructions per enqueue/dequeue/finish script call, redis-server
# under callgrind: before/after comparisons of the Lua scripts.
bench-redis-instructions:
	./scripts/setup.sh valgrind
	.venv/bin/python bench/script_cost.py --callgrind --n 4000 --queues 200

# Soak (not in CI): 10 minutes of mixed load at about half of capacity,
# memory sampled every 10 s; writes bench/RESULTS-soak.md.
soak:
	./scripts/setup.sh
	.venv/bin/python bench/soak.py

# The cost of a /prometheus scrape (1,000 types, 100,000 queues) and the
# Redis time per enqueue/dequeue/finish; see bench/RESULTS-observability.md.
bench-observability:
	./scripts/setup.sh
	.venv/bin/python bench/scrape.py
	.venv/bin/python bench/script_cost.py

# Debian packaging (see README, "Install on Debian").

# The build must use Debian's python3.11 from /usr/bin, never an active
# virtualenv's or a pyenv shim's python.
DEB_ENV := env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME PATH=/usr/sbin:/usr/bin:/sbin:/bin

# Fail unless debian/changelog and sharqd.__version__ carry one version.
deb-check:
	@deb=$$(dpkg-parsechangelog -S Version); \
	py=$$(/usr/bin/python3.11 -c 'import sharqd; print(sharqd.__version__)'); \
	if [ "$$deb" != "$$py" ]; then \
	    echo "version mismatch: debian/changelog $$deb, sharqd.__version__ $$py" >&2; \
	    exit 1; \
	fi; \
	echo "version $$deb"

# Build dist/sharqd_VERSION_ARCH.deb (dpkg-buildpackage writes it to ..,
# this moves it and its .buildinfo/.changes to dist/).
deb: deb-check
	$(DEB_ENV) dpkg-buildpackage -us -uc -b
	mkdir -p dist
	v=$$(dpkg-parsechangelog -S Version); a=$$(dpkg-architecture -qDEB_HOST_ARCH); \
	mv ../sharqd_$${v}_$${a}.deb ../sharqd_$${v}_$${a}.buildinfo ../sharqd_$${v}_$${a}.changes dist/
	@ls -l dist/*.deb
