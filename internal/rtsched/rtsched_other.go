//go:build !linux

package rtsched

// Apply reports ErrNotSupported for any non-empty request: only Linux is
// implemented.
func Apply(req Request) (Report, error) {
	if err := req.Validate(); err != nil {
		return Report{Requested: req}, err
	}
	if req.Empty() {
		return Report{Requested: req}, nil
	}
	return Report{Requested: req}, ErrNotSupported
}

// Threads reports ErrNotSupported: only Linux is implemented.
func Threads(pid int) ([]Thread, error) { return nil, ErrNotSupported }
