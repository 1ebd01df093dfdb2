package lab

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// Import paths of the end-to-end failover scenario and the binary it runs
// on every gateway.
const (
	e2ePackage     = "github.com/handoffvpn/handoff/lab/scenario/e2e"
	handoffPackage = "github.com/handoffvpn/handoff/cmd/handoff"
)

// e2eResult is what the tests check of lab/scenario/e2e's result.
type e2eResult struct {
	Fault               string   `json:"fault"`
	GapMS               float64  `json:"gap_ms"`
	ProbesSent          int      `json:"probes_sent"`
	ProbesLost          int      `json:"probes_lost"`
	GapStartMS          float64  `json:"gap_start_ms"`
	Resumed             bool     `json:"resumed"`
	OldActive           string   `json:"old_active"`
	NewActive           string   `json:"new_active"`
	TermsWithTwoActives []uint64 `json:"terms_with_two_actives"`
	SpuriousBeforeFault []string `json:"spurious_before_fault"`
	// Load is the load the run was under, "" for none.
	Load  string `json:"load"`
	Terms []struct {
		Term uint64 `json:"term"`
		Node string `json:"node"`
		SAs  int    `json:"sas"`
	} `json:"terms"`
	VIPHolders      []string `json:"vip_holders"`
	ClientChildSAs  int      `json:"client_child_sas"`
	SAsCarried      int      `json:"sas_carried"`
	ESPSeqReused    int      `json:"esp_seq_reused"`
	SPIs            int      `json:"spis_seen"`
	SecondGapMS     float64  `json:"second_gap_ms"`
	SecondLost      int      `json:"second_lost"`
	SecondSent      int      `json:"second_sent"`
	ClientIKEKept   bool     `json:"client_ike_kept"`
	IKECarried      int      `json:"ike_carried"`
	StandbyInbound  int      `json:"standby_inbound"`
	StandbyOutbound int      `json:"standby_outbound"`
	// ClientIKEAuths counts the client's IKE_AUTH exchanges (1: it never
	// set up a new IKE_SA).
	ClientIKEAuths int     `json:"client_ike_auths"`
	WatchMS        int64   `json:"watch_ms"`
	WatchGapMS     float64 `json:"watch_gap_ms"`
	WatchLost      int     `json:"watch_lost"`
}

// e2eCase is one fault and what must hold after it.
type e2eCase struct {
	// name is the subtest's and E2E_FAULTS' name (default: fault).
	name  string
	fault string
	args  []string
	// mayStay: the active may also keep (or win back) the role, as after
	// a flapping link; traffic must resume either way.
	mayStay bool
	// moves: the active role moves to another gateway (false: a standby
	// was hit and the active must stay where it is).
	moves bool
	// auths is the number of IKE_AUTH exchanges the client must have run
	// (default 1 for the ikeCarried cases; 2 with a reauthentication).
	auths int
	// ikeCarried: the agents carry the IKE_SAs (-ike-carry): the client
	// must keep its IKE_SA (same SPIs) through the takeover and after the
	// second phase, and the new active must say it activated it.
	ikeCarried bool
	// loaded: the case runs under load, and a failover before the fault
	// is what it is about: it fails the case at once, with no rerun.
	loaded bool
}

// TestPrivilegedE2EFailover runs Handoff's agents on real strongSwan
// gateways in the UML lab, one guest per fault, and checks what a client
// of the VPN must be able to rely on: its traffic resumes, at most one node
// is active per term, the new active carries every SA, no ESP sequence
// number is sent twice, and exactly one gateway holds the VIP afterwards.
// How long the outage lasts is for `make bench-failover`.
//
// The guest has one slow CPU shared by three agents and four charons, so a
// run can miss a timing bound for the guest's sake (a leader that misses
// its 140 ms lease steps down; a drain can land mid-election). A case whose
// only problems are such timing ones runs once more, and fails if the
// second run does too; both runs' problems are logged. A broken safety
// invariant (two actives in a term, a reused ESP sequence number, an SA not
// carried, a wrong VIP holder) fails at once, never retried, and so does a
// failover before the fault in the case that runs under load.
func TestPrivilegedE2EFailover(t *testing.T) {
	requireRoot(t)
	bins := buildScenarios(t, e2ePackage, handoffPackage)
	for _, tc := range e2eCases() {
		t.Run(tc.label(), func(t *testing.T) {
			args := append([]string{"-fault", tc.fault}, tc.args...)
			// E2E_ARGS: more scenario flags for every case, e.g.
			// "-cpuprofile" or "-heartbeat 200ms -lease 90ms".
			args = append(args, strings.Fields(os.Getenv("E2E_ARGS"))...)
			sc := e2eScenario(bins[e2ePackage], bins[handoffPackage], args...)
			for attempt := 1; ; attempt++ {
				safety, timing, dir := runE2E(t, sc, tc)
				for _, p := range safety {
					t.Error(p)
				}
				if len(safety) == 0 && len(timing) == 0 {
					return
				}
				if len(safety) > 0 || attempt == 2 {
					for _, p := range timing {
						t.Error(p)
					}
					t.Logf("logs: %s (agent logs in gw*/agent.log)", dir)
					return
				}
				t.Logf("attempt 1 missed a timing bound, running the fault once more (logs: %s):\n  %s", dir, strings.Join(timing, "\n  "))
			}
		})
	}
}

// runE2E runs one guest of the scenario and sorts what went wrong into
// broken safety invariants and missed timing bounds (a scenario that did
// not complete counts as the latter: its reason is in the log).
func runE2E(t *testing.T, sc Scenario, tc e2eCase) (safety, timing []string, dir string) {
	t.Helper()
	res, safety, err := runGuest(t, sc)
	if err != nil {
		return nil, []string{fmt.Sprintf("running %s: %v", sc.Name, err)}, ""
	}
	var r e2eResult
	if err := res.Decode(&r); err != nil {
		return append(safety, err.Error()), timing, res.Dir
	}
	s, tm := checkE2E(tc, r)
	t.Logf("%s: gap %.1f ms, %d lost, %s → %s, second phase gap %.1f ms (%d of %d lost)",
		tc.label(), r.GapMS, r.ProbesLost, r.OldActive, r.NewActive, r.SecondGapMS, r.SecondLost, r.SecondSent)
	return append(safety, s...), tm, res.Dir
}

// e2eCases are the fault scenarios, all of them run by default (CI);
// E2E_FAULTS (comma-separated names)
// picks some of them.
func e2eCases() []e2eCase {
	all := []e2eCase{
		// 5 s after the fault, not 3: the new active re-establishes the
		// IKE SA about a second after taking over, and the client's switch
		// to it, slowed by the guest, could fill the last half second the
		// test reads "resumed" from (seen in CI).
		{fault: "kill", args: []string{"-after", "5s"}, moves: true},
		// Planned: the operator's `handoff drain` on the active.
		// Losses are measured (make bench-failover's drain_lost), not
		// asserted: in the one-CPU guest an election often follows the
		// transfer (docs/failover-timings.md).
		{fault: "drain", args: []string{"-second=false"}, moves: true},
		// Charon dies, its agent lives: the agent's own checks need three
		// failures a second apart before it hands over, so the gap is
		// 3.2–4.5 s (4 runs, 2026-12-02): 8 s of probes after the fault.
		{fault: "charon", args: []string{"-after", "8s"}, moves: true},
		{fault: "uplink", args: []string{"-after", "5s"}, moves: true},
		{fault: "isolate", args: []string{"-after", "5s"}, moves: true},
		{fault: "standby"},
		// The aws provider against the built-in emulator, its fabric
		// moving the VIP and the route in the lab as EC2 would.
		{name: "aws-kill", fault: "kill", args: []string{"-provider", "aws", "-after", "5s"}, moves: true},
		// Two gateways and a witness: the witness must never take over,
		// and must not hand leadership to the dead gateway (it did, 1 run
		// in 3, before handOver pinged its candidates).
		{fault: "witness", args: []string{"-after", "5s"}, moves: true},
		// A busy gateway: two busy loops per guest CPU at normal priority
		// and 2 ± 1 ms of netem on every gateway's outside link (Raft
		// rides it) for 10 s before the kill, the agents at realtime
		// priority as the shipped systemd unit runs them. Nothing may
		// fail over before the kill; then the kill's usual invariants.
		{name: "kill-loaded", fault: "kill", args: []string{"-busy-loops", "2", "-netem-delay", "2ms", "-netem-jitter", "1ms",
			"-realtime", "10", "-warmup", "10s", "-after", "5s"}, moves: true, loaded: true},
		// IKE continuity (issue 18): charon's ha plugin on every gateway,
		// the agents carrying the IKE_SAs. The client keeps its IKE_SA:
		// same SPIs after the takeover, its DPD and a CHILD_SA rekey
		// answered by the new active (the second phase), never
		// re-initiated.
		// The client's IKE_SA rekey ends the second phase; then 90 s of
		// probes must see no second outage (a broken IKE_SA would make
		// the client give up and restart within it).
		{name: "kill-ike", fault: "kill", args: []string{"-ike-carry", "-second-ike-rekey", "-after", "5s", "-watch", "90s"}, moves: true, ikeCarried: true},
		// A client that reauthenticates right after the takeover: a new
		// IKE_SA (its second IKE_AUTH) made with the new active.
		{name: "kill-ike-reauth", fault: "kill", args: []string{"-ike-carry", "-second-reauth", "-after", "5s"}, moves: true, ikeCarried: true, auths: 2},
		{name: "drain-ike", fault: "drain", args: []string{"-ike-carry", "-after", "5s"}, moves: true, ikeCarried: true},
		// A kill one second after the client rekeyed its CHILD_SA: the
		// successor carries the new CHILD_SA and its IKE_SA.
		{name: "kill-ike-rekeyed", fault: "kill", args: []string{"-ike-carry", "-rekey-before", "1s", "-after", "5s"}, moves: true, ikeCarried: true},
		// A link that flaps faster than the lease: the old active may lose
		// the role and win it back (it fences and takes over again).
		{fault: "flap", args: []string{"-after", "5s"}, moves: true, mayStay: true},
	}
	pick := os.Getenv("E2E_FAULTS")
	if pick == "" {
		return all
	}
	var out []e2eCase
	for _, c := range all {
		if slices.Contains(strings.Split(pick, ","), c.label()) {
			out = append(out, c)
		}
	}
	return out
}

// secondOutage is the gap in the second phase that counts as an outage.
const secondOutage = 1000.0

func (c e2eCase) label() string {
	if c.name != "" {
		return c.name
	}
	return c.fault
}

// checkE2E says what of the result breaks a safety invariant and what
// misses a timing bound.
func checkE2E(tc e2eCase, r e2eResult) (safety, timing []string) {
	bad := func(list *[]string, format string, args ...any) { *list = append(*list, fmt.Sprintf(format, args...)) }
	if !r.Resumed {
		bad(&timing, "traffic did not resume: %d of %d probes lost, largest gap %.1f ms", r.ProbesLost, r.ProbesSent, r.GapMS)
	}
	// In the one-CPU guest a stall can still cost a leader its lease:
	// a false failover, counted as timing so that one rerun may pass.
	if len(r.SpuriousBeforeFault) > 0 {
		list := &timing
		if tc.loaded {
			list = &safety
		}
		bad(list, "failover before the fault (nothing had failed): %v", r.SpuriousBeforeFault)
	}
	if tc.loaded && r.Load == "" {
		bad(&safety, "the case ran without its load: the scenario reports none")
	}
	if len(r.TermsWithTwoActives) > 0 {
		bad(&safety, "two nodes committed active in terms %v: %+v", r.TermsWithTwoActives, r.Terms)
	}
	if r.ESPSeqReused != 0 {
		bad(&safety, "%d ESP sequence numbers reused on the wire", r.ESPSeqReused)
	}
	if len(r.VIPHolders) != 1 || r.VIPHolders[0] != r.NewActive {
		bad(&safety, "VIP held by %v, want exactly the active %s", r.VIPHolders, r.NewActive)
	}
	// The client's next DPD and a CHILD_SA rekey after the failover must
	// not cost a second outage: a client that had to rebuild its IKE SA
	// would lose at least its DPD timeout (1.4 s in the lab).
	if r.SecondSent == 0 && !slices.Contains(tc.args, "-second=false") {
		bad(&timing, "the second phase (client DPD and rekey) sent no probes")
	}
	if r.SecondSent > 0 && r.SecondGapMS >= secondOutage {
		bad(&timing, "second outage at the client's DPD/rekey: gap %.1f ms, %d of %d probes lost", r.SecondGapMS, r.SecondLost, r.SecondSent)
	}
	if tc.ikeCarried {
		// Each standby's charon holds the client's CHILD_SA, inbound
		// only: an outbound state there would send at sequence number 0
		// under the active's key.
		if r.StandbyOutbound != 0 {
			bad(&safety, "the standbys held %d outbound states before the fault", r.StandbyOutbound)
		}
		if r.StandbyInbound < 2 {
			bad(&safety, "the standbys held %d inbound states of the client's CHILD_SA before the fault, want one each", r.StandbyInbound)
		}
	}
	if tc.ikeCarried && len(r.Terms) > 0 {
		if r.IKECarried < 1 {
			bad(&safety, "the new active activated %d carried IKE_SAs, want the client's", r.IKECarried)
		}
		// Timing, not safety: the lab's client gives up on a gateway
		// 1.4 s after a request, so a stall of the guest that long makes it
		// restart its IKE_SA however well it was carried. A carrier that
		// does not carry fails both attempts.
		if !r.ClientIKEKept {
			bad(&timing, "the client's IKE_SA did not survive the takeover (its SPIs changed, or it has none)")
		}
		if want := max(tc.auths, 1); r.ClientIKEAuths != want {
			bad(&timing, "the client authenticated %d times, want %d: it set up a new IKE_SA instead of keeping (or rekeying) its own", r.ClientIKEAuths, want)
		}
		if r.WatchMS > 0 && r.WatchGapMS >= secondOutage {
			bad(&timing, "late second outage within %d ms after the second phase: gap %.1f ms, %d probes lost", r.WatchMS, r.WatchGapMS, r.WatchLost)
		}
	}
	if tc.moves {
		if !tc.mayStay && (r.NewActive == r.OldActive || len(r.Terms) == 0) {
			bad(&timing, "the active stayed on %s (terms after the fault: %+v)", r.OldActive, r.Terms)
			return safety, timing
		}
		if len(r.Terms) > 0 && (r.ClientChildSAs < 1 || r.SAsCarried < r.ClientChildSAs) {
			bad(&safety, "the new active installed %d SAs, the client had %d CHILD_SAs", r.SAsCarried, r.ClientChildSAs)
		}
		if r.SPIs < 2 {
			bad(&safety, "%d SPIs on the wire, want the tunnel's two", r.SPIs)
		}
	} else {
		// A leader that misses its lease in the starved guest can lose
		// the role (and win it back, or not): timing, not a broken promise.
		if r.NewActive != r.OldActive || len(r.Terms) != 0 {
			bad(&timing, "the active changed (%s → %s) after a standby died (terms %+v)", r.OldActive, r.NewActive, r.Terms)
		}
		if r.ProbesLost > 2 {
			bad(&timing, "%d probes lost when a standby died", r.ProbesLost)
		}
	}
	return safety, timing
}

// e2eScenario is the end-to-end failover scenario for the executable built
// from e2ePackage, with the handoff binary every gateway runs.
func e2eScenario(prog, handoff string, args ...string) Scenario {
	return Scenario{Name: "e2e", Program: prog, Args: append([]string{"-handoff", handoff}, args...),
		// 200 s: kill-ike watches 90 s past its second phase.
		Timeout: 200 * time.Second, MemMiB: 384,
		// The linux provider opens netlink for every family the library
		// knows, netfilter included: without nfnetlink it fails to start.
		// sch_netem: the loaded case shapes the gateways' links.
		// nf_tables: the ESP egress fence of IKE continuity's standbys.
		Modules: []string{"nfnetlink", "sch_netem", "nf_tables"}}
}
