// Package local holds the checks a gateway runs on itself: charon answers
// on its VICI socket (version and stats, each run on a fresh session with a
// bounded dial), and the charon process is alive and not stopped.
package local

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/strongswan/govici/vici"

	"github.com/handoffvpn/handoff/healthcheck/internal/vicidial"
)

// ErrBadReply: charon answered a VICI command with something unusable.
var ErrBadReply = errors.New("unexpected VICI reply")

// DefaultSocket is charon's default VICI socket.
const DefaultSocket = "/var/run/charon.vici"

// VICI checks that charon answers `version` and `stats` on its VICI socket.
type VICI struct {
	socket string
}

// NewVICI returns a VICI check for the socket at path (DefaultSocket if
// empty).
func NewVICI(path string) *VICI {
	if path == "" {
		path = DefaultSocket
	}
	return &VICI{socket: path}
}

// Name is "vici".
func (v *VICI) Name() string { return "vici" }

// Run connects, asks for the version and the stats, and closes.
func (v *VICI) Run(ctx context.Context) error {
	s, err := vicidial.Session(ctx, v.socket)
	if err != nil {
		return err
	}
	defer s.Close()
	ver, err := s.Call(ctx, "version", nil)
	if err != nil {
		return fmt.Errorf("calling VICI version: %w", err)
	}
	if d, _ := ver.Get("daemon").(string); d == "" {
		return fmt.Errorf("calling VICI version: %w: no daemon field", ErrBadReply)
	}
	if _, err := stats(ctx, s); err != nil {
		return err
	}
	return nil
}

// Stats is the part of charon's `stats` the health checks and tests use.
type Stats struct {
	// IKESAs and HalfOpen count the IKE_SAs, and those still in
	// IKE_SA_INIT (half-open), charon holds.
	IKESAs, HalfOpen int
	// Workers and IdleWorkers are the thread pool.
	Workers, IdleWorkers int
}

// ReadStats reads charon's stats over a fresh session.
func ReadStats(ctx context.Context, socket string) (Stats, error) {
	s, err := vicidial.Session(ctx, socket)
	if err != nil {
		return Stats{}, err
	}
	defer s.Close()
	return stats(ctx, s)
}

func stats(ctx context.Context, s *vici.Session) (Stats, error) {
	m, err := s.Call(ctx, "stats", nil)
	if err != nil {
		return Stats{}, fmt.Errorf("calling VICI stats: %w", err)
	}
	var st Stats
	ike, ok := m.Get("ikesas").(*vici.Message)
	if !ok {
		return Stats{}, fmt.Errorf("calling VICI stats: %w: no ikesas section", ErrBadReply)
	}
	if st.IKESAs, err = intField(ike, "total"); err != nil {
		return Stats{}, err
	}
	if st.HalfOpen, err = intField(ike, "half-open"); err != nil {
		return Stats{}, err
	}
	if w, ok := m.Get("workers").(*vici.Message); ok {
		st.Workers, _ = intField(w, "total")
		st.IdleWorkers, _ = intField(w, "idle")
	}
	return st, nil
}

func intField(m *vici.Message, key string) (int, error) {
	s, _ := m.Get(key).(string)
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("reading VICI stats: %w: %s = %q", ErrBadReply, key, s)
	}
	return n, nil
}
