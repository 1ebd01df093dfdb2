# Handoff — failover orchestrator for IKEv2/IPsec gateway fleets.
# `make help` lists the targets. Every target installs what it needs.

GO        ?= go
GOFLAGS   ?=
PKGS      ?= ./...
BIN       ?= bin/handoff
TEST_TIMEOUT ?= 25m

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The version `handoff version`, /v1/status, `members` and
# handoff_build_info report: the nearest tag, else the commit, marked when
# the tree has changes (the toolchain adds the full revision itself).
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   ?= -X github.com/handoffvpn/handoff/internal/buildinfo.stamped=$(VERSION)

.PHONY: build
build: ## build bin/handoff, stamped with VERSION (git describe)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/handoff

.PHONY: demo
demo: ## run the in-process failover demo (no cloud account, no root)
	$(GO) run ./cmd/handoff demo

.PHONY: deps
deps: lab-deps operator-deps ## install the Debian packages the labs and the page test need (as root, only when missing)

# The kernel-lab packages boot user-mode-linux guests whose timing-sensitive
# scenarios (Raft leases on one slow CPU) must not share the two cores with
# another guest: they run one package at a time, after everything else.
UML_PKGS ?= ./ipsec/xfrm ./lab/...

.PHONY: test
test: deps ## run every test tier (unit, in-process cluster, host lab, kernel lab)
	$(GO) test $(GOFLAGS) -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list $(PKGS) | grep -v -e '/lab$$' -e '/lab/' -e '/ipsec/xfrm$$')
	$(GO) test $(GOFLAGS) -p 1 -count=1 -timeout $(TEST_TIMEOUT) $(UML_PKGS)

.PHONY: test-race
test-race: ## unit and in-process cluster tests under the race detector
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./raftstore/... ./agent/... ./config/... ./internal/... ./ipsec/... ./providers/...

.PHONY: test-unit
test-unit: ## unit and in-process tests only (no lab)
	$(GO) test -count=1 -short $(PKGS)

.PHONY: fuzz
# Minimising each new input for Go's default 60 s made a target with
# kilobyte inputs (FuzzReadSnapshot) run a dozen inputs in half a minute.
FUZZ = $(GO) test -run '^$$' -fuzztime $${FUZZTIME:-30s} -fuzzminimizetime $${FUZZMINIMIZETIME:-3s}
fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	$(FUZZ) ./raftstore -fuzz FuzzDecodeCommand
	$(FUZZ) ./raftstore -fuzz FuzzReadSnapshot
	$(FUZZ) ./raftstore -fuzz FuzzSealerOpen
	$(FUZZ) ./raftstore -fuzz FuzzReadRPCRequest
	$(FUZZ) ./operator/api -fuzz FuzzDecodeRequest
	$(FUZZ) ./operator/webhook -fuzz FuzzVerify
	$(FUZZ) ./config -fuzz FuzzParse
	$(FUZZ) ./ipsec/sa -fuzz 'FuzzUnmarshal$$'
	$(FUZZ) ./ipsec/sa -fuzz FuzzUnmarshalReplay
	$(FUZZ) ./ipsec/xfrm -fuzz FuzzDecode
	$(FUZZ) ./ipsec/vici -fuzz FuzzParse
	$(FUZZ) ./healthcheck/ikeprobe -fuzz FuzzParseResponse

.PHONY: bench
bench: bench-all ## every benchmark, then the performance driver's table and one JSON line (perf.mk)

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

-include lab/lab.mk
-include lab/sahandoff.mk
-include lab/e2e.mk
-include operator/operator.mk
-include perf.mk
-include dist/install.mk
