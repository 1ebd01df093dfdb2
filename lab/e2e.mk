# lab/e2e.mk: end-to-end failover in the kernel lab: Handoff agents on real
# strongSwan gateways in a user-mode-linux guest (lab/scenario/e2e), and the
# benchmark against keepalived + strongSwan (lab/scenario/baseline).
# -include'd by the top-level Makefile next to lab/lab.mk; see docs/lab.md
# and docs/failover-timings.md.
#
#   make lab-e2e          TestPrivilegedE2E*: one guest per reliable fault (root)
#   make bench-failover   N Handoff runs (active killed) and N baseline runs in
#                         one benchmark: one JSON line, docs/failover-timings.md
#
#   BENCH_RUNS=5          runs of each side
#   E2E_FLAGS=            bench-failover's scenario flags (default: the product's 150/150/50
#                         Raft timing, agents at realtime priority, below)
#   E2E_FAULTS=           lab-e2e: only these faults (comma-separated), e.g. kill
#   E2E_ARGS=             lab-e2e: more scenario flags for every fault, e.g. -cpuprofile

E2E_GO ?= go
BENCH_RUNS ?= 5
# The benchmark runs the product's own Raft timing (150/150/50 ms) with the
# agents at realtime priority in the guest, as the shipped systemd unit
# can run them (scheduling.realtime_priority 10): at normal priority the
# one-CPU guest needed 200/200/80 at best (docs/failover-timings.md). The
# test tier keeps the scenario's 300/300/140 at normal priority for a host
# twice as busy. -ike-carry: the gateways carry the IKE_SAs (charon's ha
# plugin, dataplane.ha_listen), re-establishment is only the fallback.
E2E_FLAGS ?= -heartbeat 150ms -election 150ms -lease 50ms -realtime 10 -ike-carry
E2E_TEST_FLAGS ?= -count=1 -timeout 12m -v

.PHONY: lab-e2e bench-failover

lab-e2e: lab-deps ## end-to-end failover tests: Handoff agents + charon in the UML lab (root)
	$(E2E_GO) test $(E2E_TEST_FLAGS) -run 'TestPrivilegedE2E' ./lab

bench-failover: lab-deps ## Handoff vs keepalived failover, BENCH_RUNS guests each: one JSON line, docs/failover-timings.md
	$(E2E_GO) run ./lab/scenario/e2ebench -n $(BENCH_RUNS) -doc docs/failover-timings.md $(if $(E2E_FLAGS),-- $(E2E_FLAGS))
