package main

// analysis is the static part of the breakdown: where the time goes and
// what would remove it, written from the measured runs (Nov and Dec 2026,
// this machine: 2 vCPUs shared with other builds; the UML guest has one CPU).
const analysis = `## Where the time goes, and what would remove it

The target (client gap ≤ 150 ms, ratio ≥ 20 against the baseline) is **not
met in the UML lab**, but since 2026-12-08 the lab runs the product's own
Raft timing. The SA handoff itself is not the problem: the kernel part
(install) takes 2–13 ms, and a new active that has the SAs carries the
tunnel without a single replay error or reused sequence number. The time
goes to Raft on a starved CPU:

- **Raft timing in the guest: the product's 150 ms heartbeat / 150 ms
  election / 50 ms lease, the agents at realtime priority** (the
  scenario's ` + "`-realtime 10`" + `: SCHED_RR 10 on every thread, as
  ` + "`scheduling.realtime_priority`" + ` and the shipped unit set it). The guest
  is a uniprocessor UML kernel (HZ=100, ~60 µs per system call, the clock
  included) running three agents, four charons, the probe stream and the
  ESP capture. At normal priority it never held 150/150/50 (terms 3–15
  before the fault, 2026-12-07 and again 2026-12-08), and 200/200/80 only
  sometimes: five runs of that benchmark on the final tree of 2026-12-07
  had a median gap of 564 ms and one run that never formed a cluster.
  With the agents ahead of the charons and the probes, five of five runs
  above had no failover before the fault. The test tier (` + "`make lab-e2e`" + `,
  ` + "`make test`" + `) keeps 300/300/140 at normal priority, so that a host
  twice as busy still passes; its ` + "`kill-loaded`" + ` case runs the agents at
  realtime priority under two busy loops and netem on every Raft link.
  Earlier, 100/100/30, 100/100/45 and 200/200/90 never settled at normal
  priority, and 400 ms made it worse (the leader's heartbeats come every
  tenth of the timeout).
- **Formation.** Until 2026-12-07 a node joined as a voter at once, so the
  leader's quorum counted on a process still starting: every first join
  cost the leader its lease, and the cluster formed through up to eight
  terms. Nodes now join as learners and vote once caught up; the
  formation takes one term.
- **detect** (last contact → candidacy): a follower starts its election
  once the leader has been silent for ` + "`raft.suspect_after`" + ` (twice the
  lease: 100 ms here) plus its stagger (per better-ranked voter), instead of
  at Raft's randomised heartbeat timeout of 1–2 × the heartbeat: 104–121 ms
  at 150/150/50 (163–184 at 200/200/80, 285–332 at 300/300/140; 394–701 ms
  before the detector). Its floor is twice the lease, because a cut-off
  leader must have stepped down and fenced before anyone votes for another.
  The *last contact* column (active logged − agent total) is the part the
  agent's timings cannot see; it also carries the commit of the
  ` + "`active`" + ` entry, hence the small negative values.
- **elect** (candidacy → leadership): 10–15 ms in five of six trial runs
  since 2026-12-08, when followers began to keep an open Raft connection to
  each other (a term-0 AppendEntries each second, which every node drops
  unseen). Before, followers never spoke to each other until an election,
  whose vote requests then waited for a TCP connect and a mutual-TLS
  handshake in the guest; the first round failed and the election took
  Raft's randomised election timeout more: 200–300 ms in four runs of five
  at 150/150/50.
- **claim** 23–65 ms (median 41; 15–122 ms at 300/300/140, up to 420 ms in trial runs): Barrier plus two log entries (membership, claim);
  each commit waits for a follower that is itself starved.
- **install** 4–28 ms for one CHILD_SA (both states and their policies),
  now *before* the move (see *Planned hand-over*).
- **move** 19–49 ms (median 34; 22 at 300/300/140, 69.6 on 2026-12-02) for both VIPs
  (outside, then inside). The linux provider no longer waits
  ` + "`probe_timeout`" + ` on an owner query to a dead holder: a holder the
  new leader knows is gone (it lost its lease, or the kernel's neighbour
  entry for the VIP failed) is not asked.
- After the agent's *active*, the client needs the announcement to reach
  it and one probe interval (10 ms) to see the first echo.

What would remove it, in order of gain:

1. **Agent CPU.** On 2026-12-07 the failure detector's poll (every
   ` + "`suspect_stagger`" + `/2, 57 a second in the lab) became a timer set to the
   moment its election would be due, and an idle agent's CPU over a
   scenario run went from 6.1–7.8 s to 2.6–3.8 s. Before that, profiled in the guest (` + "`handoff agent -cpuprofile`" + `,
   the scenario's ` + "`-cpuprofile`" + `), an idle leader used 21 % of the CPU,
   57 % of that reading the clock (a system call in UML) for Raft's empty
   AppendEntries every ` + "`commit_timeout`" + ` (2 ms in the lab then) and its
   timers, and a fifth of the rest walking /proc for the process check. With
   ` + "`commit_timeout`" + ` at Raft's default 50 ms and the process check
   remembering charon's PID, the leader is at 16 % and a follower at 10 %,
   and the leader changes after a takeover that used to cost second outages
   became rare. What remains is Raft's heartbeat every heartbeat/10 per
   follower over TLS, and the Go runtime's own clock reads: with the agents
   at a few percent of a CPU, 100/100/30 would become stable and detect
   drop to 100–200 ms.
2. **A shorter lease.** Detection now waits exactly twice the lease
   (` + "`raft.suspect_after`" + `), so every millisecond off the lease is two off
   the gap; the lease itself only has to outlast the longest stall of a
   healthy leader, which on a dedicated core is a few milliseconds, not
   the 80 ms the guest needs. (Detecting sooner than twice the lease, from
   the data plane, is not safe on its own: a cut-off leader that has not
   yet fenced would still send.)
3. **Fewer commits before the move.** The claim phase needs Barrier and the
   claim entry; the membership entry could be skipped when unchanged (it
   is), and the claim could be pipelined with the provider's owner query.
4. **No owner-query wait for a dead holder**: done (move, above).

Outside UML (real hardware, or a host kernel with ESP) system calls are
~150× cheaper; whether 100/100/30 then meets 150 ms is not measured here.

### Second outage at the client's next DPD / rekey

Since 2026-12-08 the benchmark runs with IKE continuity (` + "`-ike-carry`" + `:
charon's ` + "`ha`" + ` plugin on every gateway, ` + "`dataplane.ha_listen`" + ` on the
agents; docs/ipsec.md). The new active's charon holds the client's IKE_SA
(same SPIs) and activates it at the takeover: nothing is re-initiated, and
the client's next DPD and CHILD_SA rekey (the *second-phase gap* column:
client idle for 1.5 × DPD, then probes and a client CHILD_SA rekey) run on
the IKE_SA it always had. ` + "`make lab-e2e`" + `'s ` + "`kill-ike`" + ` checks the SPIs are
the same and the rekey answered, at 300/300/140: second phase 0 probes
lost in every run so far.

Open, at the benchmark's 150/150/50 in the guest: in some kill runs with
IKE continuity the new active **lost its lease** about eight seconds
after the takeover, in the second phase, with two live voters left
(itself and one standby): the standby's heartbeat answers stopped for
over 50 ms, nothing in either agent's or charon's log explains it, and
the third gateway took over, carrying the IKE_SA again (the client kept
it). Those runs show a second-phase gap of 200–350 ms: three of five in
the first benchmark with IKE continuity (04:15), none of five in the one
above, two of two in test runs at this timing. None in five runs without
IKE continuity (01:58), none at 300/300/140 with it. With one voter dead
any stall of the other longer than the lease ends the term; the suspects
are the guest's single-threaded kernel (a standby's charon now installs
every carried CHILD_SA, and its agent deletes the outbound half) and the
standby agent's own work. Not found yet.

Before IKE continuity the new active initiated a fresh IKE SA to each peer
it knew right after the takeover (` + "`ipsec.Dataplane.Reestablish`" + `,
INITIAL_CONTACT); that stays as the fallback for peers whose IKE_SA was
not carried, and its switch cost 20–200 ms (see below).

### Planned hand-over (drain)

The old active keeps its VIPs and outbound SAs until the successor's
` + "`active`" + ` entry reaches its log (at most ` + "`takeover.handover_grace`" + `,
3 s in the lab). With IKE continuity it first makes its charon's IKE_SAs
passive and commits their last state, so the successor expects exactly
the message IDs the peer sends next. The successor feeds its charon the
last IKE state, installs the SAs **before** it moves anything, activates
the carried IKE_SAs, then adds and announces the outside VIP, then the
inside one, and only then asks the old active to yield them, inside
first. With the IKE_SAs carried nothing is re-established, and the drains
lose nothing (*drain lost* above; 0 in the ` + "`drain-ike`" + ` test runs too).
Three things lost probes in the move before, each found with the per-run
lost runs:

- the successor installed the SAs after the move, so the first VIP
  pointed at it before it could decrypt or encrypt;
- the lab moved the inside VIP itself, after the outside one, with up to
  200 ms of lag during which neither gateway held it;
- with the agent moving both VIPs in parallel, a node that held the
  inside VIP but not the outside one drew the protected host's replies and
  could not encrypt them: the kernel's XFRM output does not route from a
  non-local source address (10–20 probes per drain).

And until IKE continuity, the **IKE re-establishment** lost 0–37 probes
per drain (median 22 at 150/150/50): on INITIAL_CONTACT the client
installs the new CHILD_SA, deletes the old one and answers; until the
successor has that answer and has installed its half, the client sends on
an SPI the successor does not know yet and drops what the successor still
sends on the old one (the client's charon deleted the old CHILD_SA before
it installed the new one, 90–130 ms in the guest). Without INITIAL_CONTACT
(` + "`ipsec.ReestablishConfig.MakeBeforeBreak`" + `) a client whose
` + "`dpd_action`" + ` is ` + "`restart`" + ` later restarted the dead old IKE SA and
deleted the shared policies (docs/ipsec.md).

### ESP sequence numbers on the wire

The capture on the client's link counts a sequence number seen twice for
one SPI as a reuse only when the packet differs from the SPI on; the same
packet seen twice (a gateway that just lost the VIP forwards what still
reaches it, or the bridge floods a frame) is a duplicate and reuses
nothing. Until 2026-12-08 both counted as reuse. Re-run with the
distinction, the 17 and 24 "reused" numbers of two runs with IKE
continuity at 150/150/50 were duplicates (21 and 17 in the re-runs, 0
reused), all in the client's own outbound SA (the gateways' inbound one):
packets the client sent once, seen twice. The 25 of 2026-12-07 (logs
lost) fit the same pattern; that one is not proven.

### Lab stand-ins

- Each gateway has an outside VIP (203.0.113.100 on out0, the IKE/ESP
  endpoint) and an inside VIP (198.18.1.1 on in0, the protected host's
  next hop); the agents' linux provider moves both
  (` + "`interfaces = [\"in0\"]`" + `, ` + "`\"198.18.1.1/24 dev in0\"`" + `). The scenario only
  watches the outside one (netlink address events) to time the move.
- Agents run at realtime priority 10 in this benchmark (nice -5 in the
  test tier), one Go P per CPU and GOGC=400; probes at 100/s (the baseline's
  figures above use 200/s, which does not change a seconds-long gap).
`
