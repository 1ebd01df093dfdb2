// Package vicidial opens govici sessions bounded by a context: govici's
// NewSession dials with context.Background, so without this a charon that
// accepts but never answers (stopped, wedged) would hang the caller.
package vicidial

import (
	"context"
	"fmt"
	"net"

	"github.com/strongswan/govici/vici"
)

// Session opens a new VICI session on the unix socket at path; the dial
// obeys ctx. Health checks open one per run, so they never share a session
// with event listeners and always see a restarted charon.
func Session(ctx context.Context, path string) (*vici.Session, error) {
	s, err := vici.NewSession(vici.WithSocketPath(path),
		vici.WithDialContext(func(_ context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}))
	if err != nil {
		return nil, fmt.Errorf("connecting to VICI at %s: %w", path, err)
	}
	return s, nil
}
