package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/operator/api"
	"github.com/handoffvpn/handoff/raftstore"
)

// The CLI verbs talk to an agent's HTTP API (operator/api), like Consul's
// and Nomad's: the address comes from -addr or HANDOFF_ADDR, the token from
// a file (-token-file or HANDOFF_TOKEN_FILE) or HANDOFF_TOKEN, never from
// the command line (see token.go); tables by default, -json for scripts.

const cliUsage = `operator commands (over the agent's HTTP API):
  status                              this agent's view: active node, leader, SAs, members
  members                             members with role, Raft standing and health
  history                             failover history with per-phase timings
  sa ls                               replicated SAs: IDs, SPIs, peers (no keys)
  promote NODE                        make NODE the active gateway
  drain                               hand the active role to the best other gateway
  operator raft list-peers            the Raft configuration
  operator raft remove-peer NODE      remove NODE from the Raft configuration
  operator raft transfer-leadership [NODE]
  snapshot save FILE | restore FILE   save or restore the replicated state

common flags: -addr (HANDOFF_ADDR, default 127.0.0.1:7950), -token-file FILE
  (HANDOFF_TOKEN_FILE; or the token itself in HANDOFF_TOKEN), -ca-file
  (HANDOFF_CACERT) for an HTTPS agent, -json, -timeout
`

// cliEnv carries what a verb needs from its surroundings.
type cliEnv struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

type cliFlags struct {
	addr, tokenFile, caFile string
	json                    bool
	timeout                 time.Duration
	token                   removedTokenFlag
	getenv                  func(string) string
}

func (e cliEnv) flags(name string) (*flag.FlagSet, *cliFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	f := &cliFlags{getenv: e.getenv}
	addr := e.getenv("HANDOFF_ADDR")
	if addr == "" {
		addr = api.DefaultAddr
	}
	fs.StringVar(&f.addr, "addr", addr, "agent API address, host:port or URL (env HANDOFF_ADDR)")
	fs.StringVar(&f.tokenFile, "token-file", e.getenv("HANDOFF_TOKEN_FILE"), "file (mode 0600) holding the API token for commands that change state (env HANDOFF_TOKEN_FILE; without it, the token itself from HANDOFF_TOKEN)")
	fs.Var(&f.token, "token", "removed: a token on the command line is visible to every user; use -token-file or HANDOFF_TOKEN")
	fs.StringVar(&f.caFile, "ca-file", e.getenv("HANDOFF_CACERT"), "CA certificate to verify an HTTPS agent (env HANDOFF_CACERT)")
	fs.BoolVar(&f.json, "json", false, "print JSON instead of a table")
	fs.DurationVar(&f.timeout, "timeout", 70*time.Second, "give up after this long")
	return fs, f
}

// parseInterspersed parses flags wherever they appear among the positional
// arguments ("promote gw2 -json" as well as "promote -json gw2").
func parseInterspersed(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args, stdout); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (f *cliFlags) client() (*api.Client, error) {
	if err := f.token.check("token-file"); err != nil {
		return nil, err
	}
	token := f.getenv("HANDOFF_TOKEN")
	if f.tokenFile != "" {
		toks, err := readTokenFile("-token-file", f.tokenFile)
		if err != nil {
			return nil, err
		}
		if len(toks) == 0 {
			return nil, fmt.Errorf("-token-file: %s holds no token", f.tokenFile)
		}
		token = toks[0]
	}
	return api.NewClient(f.addr, token, api.ClientOptions{CAFile: f.caFile, Timeout: f.timeout})
}

// explain turns client errors into what the operator should do.
func explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, api.ErrUnreachable):
		return fmt.Errorf("cannot reach the agent: %w (is it running with its API on this address? set -addr or HANDOFF_ADDR)", err)
	case errors.Is(err, api.ErrUnauthorized):
		return fmt.Errorf("%w (check -token-file or HANDOFF_TOKEN)", err)
	}
	return err
}

func runCLI(ctx context.Context, verb string, args []string, env cliEnv) error {
	switch verb {
	case "status":
		return cliStatus(ctx, args, env)
	case "members":
		return cliMembers(ctx, args, env)
	case "history":
		return cliHistory(ctx, args, env)
	case "sa":
		if groupHelp("sa", args, env.stdout) {
			return nil
		}
		if len(args) == 0 || (args[0] != "ls" && args[0] != "list") {
			return usageError{"usage: handoff sa ls [flags] (handoff sa ls -h lists them)"}
		}
		return cliSAs(ctx, args[1:], env)
	case "promote":
		return cliPromote(ctx, args, env, false)
	case "drain":
		return cliPromote(ctx, args, env, true)
	case "operator":
		if groupHelp("operator", args, env.stdout) || len(args) > 0 && args[0] == "raft" && groupHelp("operator raft", args[1:], env.stdout) {
			return nil
		}
		if len(args) < 2 || args[0] != "raft" {
			return usageError{"usage: handoff operator raft list-peers | remove-peer NODE | transfer-leadership [NODE]"}
		}
		return cliRaft(ctx, args[1], args[2:], env)
	case "snapshot":
		if groupHelp("snapshot", args, env.stdout) {
			return nil
		}
		if len(args) == 0 || (args[0] != "save" && args[0] != "restore") {
			return usageError{"usage: handoff snapshot save FILE | restore FILE"}
		}
		return cliSnapshot(ctx, args[0], args[1:], env)
	}
	return usageError{fmt.Sprintf("handoff: unknown command %q", verb)}
}

// setup parses the flags and wants exactly nargs positional arguments
// (-1: zero or one).
func setup(name string, args []string, env cliEnv, nargs int, argName string) (*cliFlags, []string, *api.Client, error) {
	return setupWith(name, args, env, nargs, argName, nil)
}

// setupWith is setup for a verb with flags of its own, which more adds.
func setupWith(name string, args []string, env cliEnv, nargs int, argName string, more func(*flag.FlagSet)) (*cliFlags, []string, *api.Client, error) {
	fs, f := env.flags(name)
	if more != nil {
		more(fs)
	}
	pos, err := parseInterspersed(fs, args, env.stdout)
	if err != nil {
		return nil, nil, nil, err
	}
	switch {
	case nargs >= 0 && len(pos) != nargs:
		if nargs == 0 {
			return nil, nil, nil, usageError{fmt.Sprintf("usage: handoff %s [flags]: unexpected argument %q", name, pos[0])}
		}
		return nil, nil, nil, usageError{fmt.Sprintf("usage: handoff %s %s [flags]", name, argName)}
	case nargs < 0 && len(pos) > 1:
		return nil, nil, nil, usageError{fmt.Sprintf("usage: handoff %s [%s] [flags]", name, argName)}
	}
	c, err := f.client()
	if err != nil {
		return nil, nil, nil, usageError{err.Error()}
	}
	return f, pos, c, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func msd(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func health(m agent.MemberStatus) string {
	if m.Healthy {
		return "healthy"
	}
	return "UNHEALTHY"
}

func cliStatus(ctx context.Context, args []string, env cliEnv) error {
	f, _, c, err := setup("status", args, env, 0, "")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return explain(err)
	}
	if f.json {
		return printJSON(env.stdout, st)
	}
	tw := table(env.stdout)
	fmt.Fprintf(tw, "Node\t%s (%s, %s)\n", st.Node, st.Role, st.RaftState)
	fmt.Fprintf(tw, "Version\t%s\n", st.Build)
	fmt.Fprintf(tw, "Term\t%d\n", st.Term)
	fmt.Fprintf(tw, "Leader\t%s %s\n", orDash(st.Leader), st.LeaderAddr)
	act := orDash(st.Active)
	if st.Active != "" {
		act += fmt.Sprintf(" (term %d, since %s, takeover %s, reason %s)", st.Assignment.Term, st.Assignment.ActiveAt.Format(time.RFC3339),
			msd(st.Assignment.Timings.Total), orDash(string(st.Assignment.Reason)))
	} else if st.Assignment.Node != "" {
		act += fmt.Sprintf(" (%s %s at term %d)", st.Assignment.Node, st.Assignment.Phase, st.Assignment.Term)
	}
	fmt.Fprintf(tw, "Active\t%s\n", act)
	if f := st.Flap; f.Flapping {
		fmt.Fprintf(tw, "FLAPPING\t%d unplanned takeovers in the last %s (%s), since %s\n", f.Unplanned,
			time.Duration(f.WindowMs*float64(time.Millisecond)), reasonCounts(f.Reasons), f.Since.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "Carrying tunnels\t%s\n", yes(st.Carrying))
	fmt.Fprintf(tw, "SAs\t%d (replay states %d)\n", st.SAs, st.ReplayStates)
	fmt.Fprintf(tw, "Raft log\tlast %d, commit %d, applied %d\n", st.LastIndex, st.CommitIndex, st.AppliedIndex)
	if st.RaftState != "Leader" {
		fmt.Fprintf(tw, "Leader contact\t%s ago\n", st.LeaderContact.Round(time.Millisecond))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout)
	return writeMembers(env.stdout, st.Members)
}

// reasonCounts is "leader_silent 5, lease_lost 2", most frequent first.
func reasonCounts(m map[raftstore.Reason]int) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b raftstore.Reason) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(string(a), string(b))
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func writeMembers(w io.Writer, members []agent.MemberStatus) error {
	tw := table(w)
	fmt.Fprintln(tw, "NODE\tROLE\tPRIORITY\tVOTER\tLEADER\tACTIVE\tHEALTH\tOBSERVERS\tVERSION\tADDRESS")
	for _, m := range members {
		var obs []string
		for _, o := range m.Observations {
			s := o.Observer + ":up"
			if !o.Healthy {
				s = o.Observer + ":down"
			}
			obs = append(obs, s)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, orDash(string(m.Role)), m.Priority, yes(m.Voter),
			yes(m.Leader), yes(m.Active), health(m), orDash(strings.Join(obs, ",")), orDash(m.Version), m.Address)
	}
	return tw.Flush()
}

func cliMembers(ctx context.Context, args []string, env cliEnv) error {
	f, _, c, err := setup("members", args, env, 0, "")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	m, err := c.Members(ctx)
	if err != nil {
		return explain(err)
	}
	if f.json {
		return printJSON(env.stdout, m)
	}
	return writeMembers(env.stdout, m)
}

func cliHistory(ctx context.Context, args []string, env cliEnv) error {
	f, _, c, err := setup("history", args, env, 0, "")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	h, err := c.History(ctx)
	if err != nil {
		return explain(err)
	}
	if f.json {
		if h == nil {
			h = []agent.HistoryEntry{}
		}
		return printJSON(env.stdout, h)
	}
	if len(h) == 0 {
		fmt.Fprintln(env.stdout, "no takeover recorded")
		return nil
	}
	tw := table(env.stdout)
	fmt.Fprintln(tw, "TERM\tFROM\tTO\tREASON\tRESULT\tDETECT\tELECT\tCLAIM\tINSTALL\tMOVE\tTOTAL\tSAS\tCLAIMED\tDETAIL")
	for _, e := range h {
		t := e.Timings
		res := e.Result
		if e.Error != "" {
			res += " (" + e.Error + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Term, orDash(e.From), e.To,
			orDash(string(e.Reason)), res, msd(t.Detect), msd(t.Elect), msd(t.Claim), msd(t.Install), msd(t.Move), msd(t.Total), e.SAs,
			e.ClaimedAt.Format(time.RFC3339), orDash(e.Detail))
	}
	return tw.Flush()
}

func cliSAs(ctx context.Context, args []string, env cliEnv) error {
	var q api.SAQuery
	f, _, c, err := setupWith("sa ls", args, env, 0, "", func(fs *flag.FlagSet) {
		fs.IntVar(&q.Limit, "limit", 0, "show at most N SAs (0: all)")
		fs.StringVar(&q.Peer, "peer", "", "only SAs with this remote address (with or without port) or remote identity")
		fs.StringVar(&q.IKE, "ike", "", "only SAs of this IKE_SA or CHILD_SA name")
	})
	if err != nil {
		return err
	}
	if q.Limit < 0 {
		return usageError{fmt.Sprintf("handoff sa ls: -limit %d: want 0 or more", q.Limit)}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	list, total, err := c.SAs(ctx, q)
	if err != nil {
		return explain(err)
	}
	if f.json {
		if list == nil {
			list = []agent.SAInfo{}
		}
		return printJSON(env.stdout, list)
	}
	tw := table(env.stdout)
	fmt.Fprintln(tw, "ID\tIKE/CHILD\tREMOTE\tREMOTE ID\tIN SPI\tOUT SPI\tALGORITHM\tOUT SEQ")
	for _, s := range list {
		if s.Error != "" {
			fmt.Fprintf(tw, "%s\t(unreadable: %s)\n", s.ID, s.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.ID, s.IKE, s.Child, orDash(s.Remote), orDash(s.RemoteID),
			s.InSPI, s.OutSPI, s.Algorithm, s.OSeq)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if total > len(list) {
		fmt.Fprintf(env.stdout, "%d of %d SAs (-limit %d)\n", len(list), total, q.Limit)
	} else {
		fmt.Fprintf(env.stdout, "%d SAs\n", len(list))
	}
	return nil
}

// cliPromote runs promote NODE or drain, then (with -wait) waits until the
// new node is active.
func cliPromote(ctx context.Context, args []string, env cliEnv, drain bool) error {
	name, nargs, argName := "promote", 1, "NODE"
	if drain {
		name, nargs, argName = "drain", 0, ""
	}
	fs, f := env.flags(name)
	wait := fs.Bool("wait", true, "wait until the new node is active")
	pos, err := parseInterspersed(fs, args, env.stdout)
	if err != nil {
		return err
	}
	if len(pos) != nargs {
		if drain {
			return usageError{"usage: handoff drain [flags]"}
		}
		return usageError{fmt.Sprintf("usage: handoff promote %s [flags]", argName)}
	}
	c, err := f.client()
	if err != nil {
		return usageError{err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var h agent.Handover
	if drain {
		h, err = c.Drain(ctx)
	} else {
		h, err = c.Promote(ctx, pos[0])
	}
	if err != nil {
		return explain(err)
	}
	result := struct {
		agent.Handover
		Active     string            `json:"active,omitempty"`
		Assignment *agent.Assignment `json:"assignment,omitempty"`
	}{Handover: h}
	if *wait {
		st, err := waitActive(ctx, c, h.To, h.Term)
		if err != nil {
			return explain(err)
		}
		result.Active, result.Assignment = st.Active, &st.Assignment
	}
	if f.json {
		return printJSON(env.stdout, result)
	}
	fmt.Fprintf(env.stdout, "leadership handed from %s to %s at term %d (replay counters of %d SAs committed first)\n",
		h.From, h.To, h.Term, h.ReplaySynced)
	if result.Assignment != nil {
		a := result.Assignment
		fmt.Fprintf(env.stdout, "%s is active at term %d: claim %s, install %s, move %s\n", a.Node, a.Term,
			msd(a.Timings.Claim), msd(a.Timings.Install), msd(a.Timings.Move))
	}
	return nil
}

func waitActive(ctx context.Context, c *api.Client, node string, after uint64) (agent.Status, error) {
	var last error
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Active == node && st.Assignment.Term > after {
			return st, nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return st, fmt.Errorf("waiting for %s to become active: %w (last error: %w)", node, ctx.Err(), last)
			}
			return st, fmt.Errorf("waiting for %s to become active (active now: %q): %w", node, st.Active, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func cliRaft(ctx context.Context, verb string, args []string, env cliEnv) error {
	switch verb {
	case "list-peers":
		f, _, c, err := setup("operator raft list-peers", args, env, 0, "")
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		peers, err := c.Peers(ctx)
		if err != nil {
			return explain(err)
		}
		if f.json {
			return printJSON(env.stdout, peers)
		}
		tw := table(env.stdout)
		fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tVOTER\tROLE")
		for _, p := range peers {
			state := "follower"
			if p.Leader {
				state = "leader"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.ID, p.Address, state, yes(p.Suffrage == "Voter"), orDash(string(p.Role)))
		}
		return tw.Flush()
	case "remove-peer":
		f, pos, c, err := setup("operator raft remove-peer", args, env, 1, "NODE")
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		if err := c.RemovePeer(ctx, pos[0]); err != nil {
			return explain(err)
		}
		if f.json {
			return printJSON(env.stdout, map[string]string{"removed": pos[0]})
		}
		fmt.Fprintf(env.stdout, "removed %s from the Raft configuration\n", pos[0])
		return nil
	case "transfer-leadership":
		f, pos, c, err := setup("operator raft transfer-leadership", args, env, -1, "NODE")
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		node := ""
		if len(pos) == 1 {
			node = pos[0]
		}
		h, err := c.TransferLeadership(ctx, node)
		if err != nil {
			return explain(err)
		}
		if f.json {
			return printJSON(env.stdout, h)
		}
		fmt.Fprintf(env.stdout, "leadership transferred from %s to %s (was term %d)\n", h.From, orDash(h.To), h.Term)
		return nil
	}
	return usageError{fmt.Sprintf("handoff operator raft: unknown verb %q (list-peers, remove-peer, transfer-leadership)", verb)}
}

func cliSnapshot(ctx context.Context, verb string, args []string, env cliEnv) error {
	f, pos, c, err := setup("snapshot "+verb, args, env, 1, "FILE")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	file := pos[0]
	var info agent.SnapshotInfo
	if verb == "save" {
		// Written next to the target and renamed, so a failed save never
		// leaves a truncated file under the name asked for.
		tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
		if err != nil {
			return fmt.Errorf("creating %s: %w", file, err)
		}
		defer os.Remove(tmp.Name())
		if err := tmp.Chmod(0o600); err != nil {
			tmp.Close()
			return fmt.Errorf("securing %s: %w", tmp.Name(), err)
		}
		info, err = c.SaveSnapshot(ctx, tmp)
		if cerr := tmp.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing %s: %w", file, cerr)
		}
		if err != nil {
			return explain(err)
		}
		if err := os.Rename(tmp.Name(), file); err != nil {
			return fmt.Errorf("saving %s: %w", file, err)
		}
	} else {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("reading snapshot: %w", err)
		}
		if info, err = c.RestoreSnapshot(ctx, data); err != nil {
			return explain(err)
		}
	}
	if f.json {
		return printJSON(env.stdout, info)
	}
	if verb == "save" {
		fmt.Fprintf(env.stdout, "saved snapshot at index %d to %s (%d bytes, sha256 %s)\n", info.Index, file, info.Size, info.SHA256)
	} else {
		fmt.Fprintf(env.stdout, "restored snapshot of index %d from %s (%d SAs, %d bytes)\n", info.Index, file, info.SAs, info.Size)
	}
	return nil
}
