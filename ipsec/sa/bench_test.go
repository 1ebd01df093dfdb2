package sa_test

import (
	"testing"

	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/ipsec/sa"
)

// benchSAs are road-warrior CHILD_SAs shaped as strongSwan installs them
// (two AEAD states with NAT-T, three policies, IKE metadata).
func benchSAs(b *testing.B) []*sa.ChildSA {
	b.Helper()
	sas, err := perf.SAs(1024, 0)
	if err != nil {
		b.Fatal(err)
	}
	return sas
}

// BenchmarkMarshal is the feed's encoding of one SA before sealing.
func BenchmarkMarshal(b *testing.B) {
	sas := benchSAs(b)
	b.ReportAllocs()
	size := 0
	for i := 0; b.Loop(); i++ {
		size = len(sa.Marshal(sas[i%len(sas)]))
	}
	b.ReportMetric(float64(size), "bytes/SA")
}

// BenchmarkUnmarshal is the takeover's decoding of one SA after unsealing.
func BenchmarkUnmarshal(b *testing.B) {
	sas := benchSAs(b)
	enc := make([][]byte, len(sas))
	for i, c := range sas {
		enc[i] = sa.Marshal(c)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c, err := sa.Unmarshal(enc[i%len(enc)])
		if err != nil {
			b.Fatal(err)
		}
		if c.ID != sas[i%len(sas)].ID {
			b.Fatalf("decoded %s, want %s", c.ID, sas[i%len(sas)].ID)
		}
	}
}
