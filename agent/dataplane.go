package agent

import (
	"context"

	"github.com/handoffvpn/handoff/ipsec/sa"
)

// Dataplane is what the agent needs from the node's IPsec stack. The real
// one is charon over VICI plus the kernel's XFRM (package ipsec); the memory
// one (package ipsec/memdp) stands in for both in tests and the demo.
type Dataplane interface {
	// Export returns every CHILD_SA the node carries now, with its replay
	// state: the full resync done on start, on reconnect and on takeover.
	Export(ctx context.Context) ([]*sa.ChildSA, error)
	// Watch sends every SA change to out until ctx ends. It returns only
	// on ctx's end or on an error the caller should retry after.
	Watch(ctx context.Context, out chan<- sa.Change) error
	// Replay reads the replay state of every CHILD_SA.
	Replay(ctx context.Context) ([]sa.Replay, error)
	// Install installs SAs and their policies idempotently. Each outbound
	// state starts at Install.OSeq.
	Install(ctx context.Context, sas []Install) error
	// Fence removes every outbound SA, so this node can send nothing more
	// with keys another node may be using.
	Fence(ctx context.Context) error
}

// Install is one CHILD_SA to install with its starting outbound sequence
// number; see sa.Install.
type Install = sa.Install

// Reestablisher is optionally implemented by dataplanes that can rebuild the
// IKE SAs a takeover could not carry (strongSwan cannot export IKE keys), so
// that the peers' next DPD or rekey finds a live IKE SA.
type Reestablisher interface {
	Reestablish(ctx context.Context, sas []*sa.ChildSA) error
}
