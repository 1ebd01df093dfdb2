package aws

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAWSClaim25EIPs100Routes moves 25 Elastic IPs and 100 routes in
// 4 route tables back and forth between two nodes through the real SDK,
// with 100 ms of emulated latency on every EC2 call. Target: at most 2 s
// per claim (ms/claim); calls/claim shows the API cost.
func BenchmarkAWSClaim25EIPs100Routes(b *testing.B) {
	fx := newFixture(b, 100*time.Millisecond, []string{"a", "b"}, Fleet{EIPs: 25, Routes: 100, Tables: 4})
	provs := []*Provider{}
	for _, node := range []string{"b", "a"} {
		s, err := fx.Settings(node)
		if err != nil {
			b.Fatal(err)
		}
		p, err := New(context.Background(), node, s) // default tuning, as deployed
		if err != nil {
			b.Fatal(err)
		}
		provs = append(provs, p)
	}
	g := fx.Emulator.Gate()
	ops := []string{"DescribeAddresses", "DescribeRouteTables", "DescribeNetworkInterfaces",
		"AssignPrivateIpAddresses", "AssociateAddress", "ReplaceRoute", "CreateTags"}
	count := func() int {
		n := 0
		for _, op := range ops {
			n += g.Calls("aws", op)
		}
		return n
	}
	var term uint64
	var took time.Duration
	calls0 := count()
	for b.Loop() {
		term++
		p := provs[int(term-1)%2] // every claim takes everything from the other node
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		err := p.Claim(ctx, term, fx.Resources)
		took += time.Since(start)
		cancel()
		if err != nil {
			b.Fatalf("aws claim %d by %s: %v", term, p.node, err)
		}
	}
	b.ReportMetric(float64(took.Milliseconds())/float64(term), "ms/claim")
	b.ReportMetric(float64(count()-calls0)/float64(term), "calls/claim")
}
