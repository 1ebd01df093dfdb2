// Package secretfile reads files that hold secrets (the cluster key, TLS
// keys, API tokens, webhook secrets) and refuses one whose mode lets
// anyone but its owner read or write it: such a secret is no longer one,
// and starting with it anyway would hide that from the operator.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// ErrExposed is wrapped by the error for a file group or others may access.
var ErrExposed = errors.New("readable by others")

// maxSize bounds what Read reads: keys and tokens are small, and a
// secret file that is not is not one.
const maxSize = 1 << 20

// Check refuses a mode that grants group or others any access.
func Check(path string, mode fs.FileMode) error {
	if perm := mode.Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is %w (mode %s); chmod 600 it", path, ErrExposed, perm)
	}
	return nil
}

// Read returns the contents of path after checking the mode of the file it
// opened (not of the name, which could be swapped in between).
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := Check(path, st.Mode()); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a key or token file", path, maxSize)
	}
	return b, nil
}
