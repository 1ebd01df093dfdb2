//go:build !linux

package linux

import (
	"context"
	"errors"

	"github.com/handoffvpn/handoff/providers"
)

// Factory fails off Linux: VIPs need netlink and AF_PACKET.
func Factory(ctx context.Context, node string, settings any) (providers.Provider, error) {
	return nil, errors.New("the linux provider runs on Linux only")
}
