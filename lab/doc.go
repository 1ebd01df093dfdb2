// Package lab is the host side of Handoff's kernel lab: it boots a
// user-mode-linux guest (Debian's linux.uml, kernel 6.1, with ESP, XFRM,
// netns, veth and bridge as modules) with the host's file system as its root,
// runs one scenario program inside it and brings the scenario's JSON result
// and logs back through a scratch directory.
//
// The machines this project runs on have no kernel ESP, so any test that
// needs real kernel IPsec SAs (export, install, replay state, failover)
// runs in such a guest. A scenario is a static Go program built on the host
// (see Build) that uses package lab/guest for its environment and result,
// lab/topo for the namespaces, lab/swan for strongSwan, lab/vrrp for
// keepalived and lab/traffic for probes and ESP capture. Those packages do
// not depend on the guest: the same topology runs on the host kernel with
// charon's kernel-libipsec (see docs/lab.md).
//
// A guest is always powered off: its init (guest-init.sh, PID 1) ends every
// run with sysrq poweroff, a guest-side timeout bounds the scenario, a
// host-side timeout(1) with -k bounds linux.uml, and the runner kills the
// whole process group it started when it returns.
package lab
