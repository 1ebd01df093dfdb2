# lab/lab.mk: the kernel lab (user-mode-linux, network namespaces,
# strongSwan). Included by the top-level Makefile; see docs/lab.md.
#
#   make lab-deps       install the lab's Debian packages (root; only what is missing)
#   make lab-smoke      boot the UML guest, one tunnel, 1,000 probes: one JSON line
#   make lab-baseline   keepalived + DPD failover in the guest: one JSON line
#   make lab-test       the lab's Go tests (privileged ones skip when not root)
#   make lab-bench      the lab's benchmarks (repeated guest runs)
#
# For `make test`: $(LAB_TEST) runs the lab's tests; `lab-test` is the same
# as a target. Both need `lab-deps` first on a fresh machine.

LAB_GO ?= go
# libstrongswan-standard-plugins carries openssl and gcm (the lab's
# proposals); it is only a Recommends, so it is named here.
LAB_APT_PACKAGES := user-mode-linux kmod strongswan-swanctl charon-systemd \
	libstrongswan-standard-plugins libcharon-extra-plugins keepalived iproute2 \
	iputils-ping iputils-arping tcpdump
# The lab's packages, listed so that lab/hostlab (a separate fixture) is
# not tested twice.
LAB_PKGS := ./lab ./lab/guest ./lab/topo ./lab/swan ./lab/vrrp ./lab/traffic \
	./lab/site ./lab/scenario/... ./lab/cmd/...
LAB_TEST_FLAGS ?= -p 1 -count=1 -timeout 12m
LAB_TEST = $(LAB_GO) test $(LAB_TEST_FLAGS) $(LAB_PKGS)
LAB_BENCH_FLAGS ?= -run '^$$' -bench PrivilegedLab -benchtime 3x -timeout 10m
LABRUN_FLAGS ?=

.PHONY: lab-deps lab-smoke lab-baseline lab-test lab-bench

lab-deps: ## install the kernel lab's Debian packages (root, only the missing ones)
	@missing=""; \
	for p in $(LAB_APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ "$$(id -u)" = 0 ]; then mkdir -p /usr/lib/modules; fi; \
	if [ -z "$$missing" ]; then echo "lab-deps: all lab packages installed"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "lab-deps: not root, not installing:$$missing (the lab's privileged tests skip without root)"; exit 0; \
	fi; \
	echo "lab-deps: installing:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

lab-smoke: lab-deps ## boot the UML guest, bring up an IKEv2 tunnel with kernel ESP, send 1,000 probes
	$(LAB_GO) run ./lab/cmd/labrun $(LABRUN_FLAGS) smoke

lab-baseline: lab-deps ## keepalived (VRRP 0.1 s) + DPD failover in the UML guest: the client-observed gap
	$(LAB_GO) run ./lab/cmd/labrun $(LABRUN_FLAGS) baseline

lab-test: lab-deps ## the lab's Go tests (UML scenarios, host namespaces; root)
	$(LAB_TEST)

lab-bench: lab-deps ## the lab's benchmarks: baseline gap and boot/tunnel times over repeated guests
	$(LAB_GO) test $(LAB_BENCH_FLAGS) ./lab
