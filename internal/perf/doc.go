// Package perf measures what decides whether Handoff keeps up at scale: how
// many SA upserts per second a three-node Raft cluster commits through the
// feed's group commit and how far behind the followers apply them, how much
// heap a replicated SA costs, how large a snapshot of 100k SAs is and how
// fast it restores, and how fast a takeover installs the replicated SAs
// compared with the kernel's raw netlink rate.
//
// It holds the shared measurement code of the benchmarks (raftstore, agent,
// ipsec/sa), of the kernel lab's installrate scenario and of the driver in
// cmd/bench, which prints a table and one JSON line (`make bench`). The
// figures are benchmarks, never test assertions: the functions here check
// behaviour (every SA arrives, every SA installs) and return numbers.
package perf
