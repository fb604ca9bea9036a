# Benchmarks (tests/perf): our mount vs s3fs-fuse, rclone mount and raw boto3 on SeaweedFS.
# `make bench` runs every workload with 1 GiB objects against s3fs and boto3, 5 interleaved
# runs each (15-20 minutes on 2 cores). It refuses to start on a busy machine (load > 0.5,
# another FUSE mount, a test server running); BENCH_ARGS adds flags, e.g.
# `make bench BENCH_ARGS="--size-mib 256 --repeat 1"`, or `--force` to run anyway, or
# `--peers all` to add rclone.
BENCH_ARGS ?=
BENCH_OUT ?= bench-results.json
BENCH := $(PY) -m tests.perf.bench --out $(BENCH_OUT)

.PHONY: bench-deps bench bench-read bench-write bench-meta bench-small bench-quick bench-profile \
	bench-mount bench-cache

bench-deps: install
	@$(MAKE) --no-print-directory install-peers

bench: bench-deps
	$(BENCH) $(BENCH_ARGS)

bench-read: bench-deps
	$(BENCH) --only read $(BENCH_ARGS)

bench-write: bench-deps
	$(BENCH) --only write $(BENCH_ARGS)

bench-meta: bench-deps
	$(BENCH) --only meta,small $(BENCH_ARGS)

# The local cache (issue 14): second passes from --cache, against the first and raw GETs;
# rand_read is included for the cached-vs-uncached random-read target.
bench-cache: bench-deps
	$(BENCH) --only cache,rand_read $(BENCH_ARGS)

# A few minutes: 64 MiB objects, one run each, short random reads, 1,000-entry listing.
bench-quick: bench-deps
	$(BENCH) --quick --size-mib 64 --repeat 1 $(BENCH_ARGS)

# py-spy stacks (folded, for flamegraph.pl or speedscope) of our FUSE server per run..
bench-profile: bench-deps
	$(PY) -m pip install -q py-spy
	$(BENCH) --profile bench-profile $(BENCH_ARGS)

# NodePublishVolume -> live mount (20 publishes) beside s3fs/rclone mount times, and the PSS
# of 50 idle mounts (issue 11's targets). Refuses a loaded machine unless BENCH_ARGS=--force.
bench-mount: bench-deps
	$(PY) -m tests.perf.bench_mount $(BENCH_ARGS)
