package sa

import (
	"bytes"
	"net/netip"
	"testing"
)

// The allocation-free address encoding must write exactly what the
// length-prefixed MarshalBinary wrote before, so logs and snapshots of
// older nodes stay readable and encodings stay comparable by hash.
func TestAddrEncodingIsMarshalBinary(t *testing.T) {
	for _, a := range []netip.Addr{{}, netip.MustParseAddr("203.0.113.100"), netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("::ffff:198.51.100.7"), netip.MustParseAddr("fe80::1%eth0")} {
		var w writer
		w.addr(a)
		mb, _ := a.MarshalBinary()
		var want writer
		want.bytes(mb)
		if !bytes.Equal(w.buf, want.buf) {
			t.Errorf("%v: encoded %x, MarshalBinary gives %x", a, w.buf, want.buf)
		}
		r := reader{buf: w.buf}
		if got := r.addr(); len(mb) <= 16 && (got != a || r.err != nil) {
			t.Errorf("%v: decoded %v (%v)", a, got, r.err)
		}
	}
}
