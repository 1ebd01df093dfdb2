// Package boundread reads blocks whose length comes from the input itself
// (a length prefix) without trusting that length for memory: the buffer
// grows as bytes actually arrive, so a prefix that claims gigabytes in a
// 16-byte input costs what the input holds, not what it claims.
package boundread

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// upfront is the most a read allocates before any byte has arrived: small
// blocks (the common case) are read in one allocation, larger ones grow.
const upfront = 64 << 10

// Exactly reads exactly n bytes from r. Memory grows with the bytes read
// (at most about twice them), never with n: when r ends early, the error
// is io.ErrUnexpectedEOF (io.EOF if it ended before the first byte) and
// what was allocated is bounded by what r held.
func Exactly(r io.Reader, n int64) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("reading a block of %d bytes: negative length", n)
	}
	if n <= upfront {
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	var buf bytes.Buffer
	buf.Grow(upfront)
	got, err := io.CopyN(&buf, r, n)
	if got == n {
		return buf.Bytes(), nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		if got == 0 {
			return nil, io.EOF
		}
		return nil, io.ErrUnexpectedEOF
	}
	return nil, err
}
