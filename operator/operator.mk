# operator/operator.mk: the operator surface (HTTP API, CLI verbs, webhooks,
# metrics, status page). Included by the top-level Makefile; see
# docs/operator.md.
#
#   make operator-deps   install Debian's chromium (root; only when missing)
#   make operator-test   the operator packages' tests, the page in headless chromium
#
# For `make test`: make `test` depend on `operator-deps` so the status-page
# test drives a real browser instead of printing its SKIP line.

OPERATOR_GO ?= go
OPERATOR_APT_PACKAGES := chromium
OPERATOR_PKGS := ./operator/... ./cmd/handoff
OPERATOR_TEST_FLAGS ?= -count=1 -timeout 5m

.PHONY: operator-deps operator-test

operator-deps: ## install Debian's chromium for the status-page browser test (root, only when missing)
	@if [ -x /usr/bin/chromium ]; then echo "operator-deps: chromium installed"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "operator-deps: not root, not installing chromium (the status-page browser test prints SKIP)"; exit 0; \
	fi; \
	echo "operator-deps: installing: $(OPERATOR_APT_PACKAGES)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(OPERATOR_APT_PACKAGES)

operator-test: operator-deps ## the operator surface's tests (API, CLI verbs, webhooks, metrics, page in chromium)
	$(OPERATOR_GO) test $(OPERATOR_TEST_FLAGS) $(OPERATOR_PKGS)
