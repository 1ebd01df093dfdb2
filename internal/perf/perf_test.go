package perf

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

func TestSAsAreDistinctAndValid(t *testing.T) {
	sas, err := SAs(70_000, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids, peers, spis := map[string]bool{}, map[netip.Addr]bool{}, map[uint32]bool{}
	for _, c := range sas {
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if ids[c.ID] || peers[c.In.Src] || spis[c.In.SPI] || spis[c.Out.SPI] {
			t.Fatalf("SA %s repeats an ID, a peer address or an SPI", c.ID)
		}
		ids[c.ID], peers[c.In.Src], spis[c.In.SPI], spis[c.Out.SPI] = true, true, true, true
	}
	if _, err := SAs(MaxSAs+1, 0); err == nil {
		t.Fatal("more SAs than distinct addresses were generated")
	}
}

func TestFeedReplicatesEverySAToEveryFollower(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A lease of a third of the heartbeat: generous, so that a slow run
	// (the race detector, a loaded machine) does not lose its leader.
	c, err := StartCluster(ctx, ClusterOptions{Dir: t.TempDir(), NoSync: true, HeartbeatTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sas, err := SAs(3000, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A storm split at a small MaxBatch, then a paced feed of new SAs.
	res, err := Feed(ctx, c, FeedOptions{SAs: sas[:2000], BatchWindow: 5 * time.Millisecond, MaxBatch: 512})
	if err != nil {
		t.Fatal(err)
	}
	if res.Upserts != 2000 || res.Entries < 4 || len(res.Commit) != 2000 || len(res.Lag) != 2*2000 {
		t.Fatalf("storm: %d upserts in %d entries, %d commit and %d lag samples", res.Upserts, res.Entries, len(res.Commit), len(res.Lag))
	}
	res, err = Feed(ctx, c, FeedOptions{SAs: sas[2000:], Rate: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Upserts != 1000 || len(res.Lag) != 2*1000 {
		t.Fatalf("paced: %d upserts, %d lag samples", res.Upserts, len(res.Lag))
	}
	for _, l := range res.Lag {
		if l <= 0 {
			t.Fatalf("a follower applied an SA %v after the active saw it", l)
		}
	}
}

func TestHeapAndSnapshotFiguresComeFromAFullFSM(t *testing.T) {
	// 20,000 SAs, so that what earlier tests' goroutines free meanwhile
	// (a megabyte or so) cannot hide the FSM's growth; each SA holds at
	// least its sealed form, over 600 bytes.
	per, err := HeapPerSA(20000)
	if err != nil {
		t.Fatal(err)
	}
	if per < 600 {
		t.Fatalf("an FSM holding 20,000 SAs grew the heap by %.0f bytes per SA, less than a sealed SA", per)
	}
	snap, err := Snapshot(2000)
	if err != nil {
		t.Fatal(err)
	}
	if snap.SAs != 2000 || snap.Bytes < 2000*100 {
		t.Fatalf("snapshot of %d SAs is %d bytes", snap.SAs, snap.Bytes)
	}
}

func TestLatencyQuantiles(t *testing.T) {
	var l Latencies
	for i := 100; i >= 1; i-- {
		l = append(l, time.Duration(i)*time.Millisecond)
	}
	if l.Quantile(0.5) != 50*time.Millisecond || l.Quantile(0.99) != 99*time.Millisecond || l.Max() != 100*time.Millisecond {
		t.Fatalf("p50 %v p99 %v max %v", l.Quantile(0.5), l.Quantile(0.99), l.Max())
	}
	if (Latencies{}).Quantile(0.5) != 0 {
		t.Fatal("empty set")
	}
}
