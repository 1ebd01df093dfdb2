# perf.mk: Handoff's performance benchmarks (docs/performance.md). The
# top-level Makefile includes it; `make bench` runs bench-all.
#
#   make bench-all     Go benchmarks, then the driver (table + one JSON line last)
#   make bench-go      the Go benchmarks only (ipsec/sa, providers, raftstore, agent)
#   make bench-driver  the driver only: replication, heap, snapshot, and the
#                      kernel install in the UML lab at 1k, 10k and 100k SAs
#                      (root; the 100k run takes several minutes, so CI runs
#                      bench-quick or the lab test instead)
#   make bench-quick   the driver with the kernel install at 1k and 10k only
#   make bench-stability
#                      the in-process cluster at the product's Raft timings
#                      for STABILITY_MINUTES (default 10) under busy-loop CPU
#                      saturation, a 100k-tunnel storm with traffic and rekey
#                      churn, jitter on every Raft link and a kill of the
#                      active every 2 minutes: spurious leader changes and
#                      fences, detection times (table + one JSON line last)

PERF_GO ?= go
# One iteration of the raftstore and agent benchmarks is a whole workload.
PERF_WORKLOAD_PKGS := ./raftstore ./agent
PERF_MICRO_PKGS := ./ipsec/sa ./providers/...
PERF_BENCH_FLAGS ?= -run '^$$' -bench . -count 1 -timeout 20m
PERF_DRIVER_FLAGS ?=
STABILITY_MINUTES ?= 10
STABILITY_FLAGS ?=

.PHONY: bench-all bench-go bench-driver bench-quick bench-stability

bench-all: bench-go bench-driver ## benchmarks and the performance driver (JSON summary on the last line)

bench-go: ## the Go benchmarks: codec, provider moves, FSM, snapshots, replication, agent feed and takeover
	$(PERF_GO) test $(PERF_BENCH_FLAGS) $(PERF_MICRO_PKGS)
	$(PERF_GO) test $(PERF_BENCH_FLAGS) -benchtime 1x $(PERF_WORKLOAD_PKGS)

bench-driver: lab-deps ## the performance driver: table, then one JSON line (kernel lab as root)
	$(PERF_GO) run ./internal/perf/cmd/bench $(PERF_DRIVER_FLAGS)

bench-quick: lab-deps ## the performance driver without the 100k kernel install
	$(PERF_GO) run ./internal/perf/cmd/bench -kernel-sizes 1000,10000 $(PERF_DRIVER_FLAGS)

bench-stability: ## the stability run (STABILITY_MINUTES, default 10): spurious failovers under CPU load, a storm, jitter and kills; table, then one JSON line
	$(PERF_GO) run ./internal/perf/cmd/stability -minutes $(STABILITY_MINUTES) $(STABILITY_FLAGS)
