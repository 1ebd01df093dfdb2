package boundread

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/internal/allocguard"
)

func TestExactlyReadsWhatIsThere(t *testing.T) {
	for _, n := range []int{0, 1, upfront, upfront + 1, 3 * upfront} {
		src := bytes.Repeat([]byte{'x'}, n+5)
		got, err := Exactly(bytes.NewReader(src), int64(n))
		if err != nil || len(got) != n {
			t.Errorf("n=%d: %d bytes, %v", n, len(got), err)
		}
	}
}

func TestExactlyTrustsNoClaim(t *testing.T) {
	for _, claim := range []int64{upfront + 1, 1 << 30, 1 << 40} {
		var err error
		got := allocguard.Allocated(func() { _, err = Exactly(strings.NewReader("sixteen bytes..."), claim) })
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("claim %d: err = %v, want io.ErrUnexpectedEOF", claim, err)
		}
		if got > 2*upfront {
			t.Errorf("claim %d of a 16-byte input allocated %d bytes", claim, got)
		}
	}
	if _, err := Exactly(strings.NewReader(""), 1<<30); !errors.Is(err, io.EOF) {
		t.Errorf("empty input: err = %v, want io.EOF", err)
	}
	if _, err := Exactly(strings.NewReader("x"), -1); err == nil {
		t.Error("a negative length was read")
	}
}
