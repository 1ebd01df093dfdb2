// Package allocguard is for tests and fuzz targets of decoders: it fails
// the test when decoding an input allocated far more than the input could
// justify, which is how a length prefix trusted for an allocation shows
// (16 bytes claiming gigabytes). Such a decoder returns an error and never
// panics, so only its memory gives it away.
package allocguard

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

const (
	// PerByte is what a decoder may allocate per input byte: decoded
	// structures are larger than their encoding.
	PerByte = 64
	// Slack is what it may allocate whatever the input: a bufio.Reader,
	// type caches on first use, and what the runtime's and the test
	// machinery's own goroutines allocate meanwhile. A prefix that claims
	// 64 MiB in a small input is far beyond it.
	Slack = 4 << 20
)

// Max is the most a decoder may allocate for an input of n bytes.
func Max(n int) uint64 { return PerByte*uint64(n) + Slack }

// Allocated returns the bytes fn allocated on the heap, every goroutine's
// included, exactly (it stops the world twice to read them).
func Allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// allocsMetric is the heap's cumulative allocated bytes. Unlike
// runtime.ReadMemStats it does not stop the world, which a fuzz target that
// measures every input would do tens of thousands of times a second; what
// it may lag behind (small objects still in per-P caches) is kilobytes,
// far inside Slack.
const allocsMetric = "/gc/heap/allocs:bytes"

func roughlyAllocated(fn func()) uint64 {
	s := []metrics.Sample{{Name: allocsMetric}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	fn()
	metrics.Read(s)
	return s[0].Value.Uint64() - before
}

// Check runs fn, which decodes an input of n bytes, and fails t when it
// allocated more than Max(n).
func Check(t testing.TB, what string, n int, fn func()) {
	t.Helper()
	if got, limit := roughlyAllocated(fn), Max(n); got > limit {
		t.Fatalf("%s allocated %d bytes for an input of %d bytes (at most %d): a length trusted before its bytes arrived?", what, got, n, limit)
	}
}
