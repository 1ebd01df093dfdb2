# dist/install.mk: install Handoff on a host without Terraform. Included by
# the top-level Makefile; docs/runbook.md ("On-prem") walks through it.
#
#   make install                          /usr/local/bin/handoff, the unit, examples
#   make install PREFIX=/usr              /usr/bin/handoff, the unit's ExecStart to match
#   make install DESTDIR=/tmp/stage       the same tree under a staging root (packaging)
#
# It installs the binary, the systemd unit (dist/handoff.service) and, in
# /etc/handoff (mode 0700), example files beside whatever is there: it never
# overwrites a configuration, a key or a certificate.

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(SYSCONFDIR)/systemd/system
INSTALL    ?= install

.PHONY: install uninstall

install: build ## install bin/handoff, the systemd unit and example configs (DESTDIR, PREFIX)
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR)
	$(INSTALL) -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/handoff
	sed 's|^ExecStart=/usr/local/bin/handoff |ExecStart=$(BINDIR)/handoff |' dist/handoff.service > $(DESTDIR)$(UNITDIR)/handoff.service.tmp
	$(INSTALL) -m 0644 $(DESTDIR)$(UNITDIR)/handoff.service.tmp $(DESTDIR)$(UNITDIR)/handoff.service
	rm -f $(DESTDIR)$(UNITDIR)/handoff.service.tmp
	$(INSTALL) -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/handoff $(DESTDIR)$(SYSCONFDIR)/handoff/tls
	$(INSTALL) -m 0600 dist/handoff.hcl.example $(DESTDIR)$(SYSCONFDIR)/handoff/handoff.hcl.example
	$(INSTALL) -m 0644 dist/reestablish.yaml.example $(DESTDIR)$(SYSCONFDIR)/handoff/reestablish.yaml.example
	@echo "installed $(DESTDIR)$(BINDIR)/handoff and $(DESTDIR)$(UNITDIR)/handoff.service;"
	@echo "next: docs/runbook.md, 'On-prem: a linux-provider pair' (config, keys, systemctl daemon-reload)"

uninstall: ## remove what install installed (not /etc/handoff's own files)
	rm -f $(DESTDIR)$(BINDIR)/handoff $(DESTDIR)$(UNITDIR)/handoff.service
	rm -f $(DESTDIR)$(SYSCONFDIR)/handoff/handoff.hcl.example $(DESTDIR)$(SYSCONFDIR)/handoff/reestablish.yaml.example
