# lab/sahandoff.mk: the SA handoff scenario of the kernel lab. Included by
# the top-level Makefile after lab/lab.mk; see docs/ipsec.md.
#
#   make lab-sa-handoff        gw1's SAs exported, installed on gw2 with the
#                              sequence number jump, VIPs moved, gw1 killed:
#                              one JSON line
#   make lab-sa-handoff-test   the same as a Go test with its assertions
#
# SAHANDOFF_ARGS passes scenario flags, e.g.
#   make lab-sa-handoff SAHANDOFF_ARGS="-reestablish=false"
#   make lab-sa-handoff SAHANDOFF_ARGS="-encap=false -interval 10ms"

SAHANDOFF_GO ?= go
SAHANDOFF_FLAGS ?=
SAHANDOFF_ARGS ?=

.PHONY: lab-sa-handoff lab-sa-handoff-test

lab-sa-handoff: lab-deps ## SA handoff gw1 -> gw2 in the UML guest (real VICI + XFRM): one JSON line
	$(SAHANDOFF_GO) run ./lab/cmd/sahandoff $(SAHANDOFF_FLAGS) -- $(SAHANDOFF_ARGS)

lab-sa-handoff-test: lab-deps ## the SA handoff scenario and the kernel XFRM checks as Go tests (root)
	$(SAHANDOFF_GO) test -count=1 -timeout 10m -run 'TestPrivileged' ./lab/cmd/sahandoff ./ipsec/xfrm
