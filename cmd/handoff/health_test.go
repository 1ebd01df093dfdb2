package main

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/config"
)

// TestObserverWiring starts the observer checks against a loopback
// address where no IKE daemon answers: the verdict must become known and
// unhealthy within fall × interval, naming the failed probes.
func TestObserverWiring(t *testing.T) {
	cfg := &config.Config{Health: config.Health{ProbeAddress: netip.MustParseAddr("127.0.0.1"),
		Interval: 30 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 1, Fall: 2}}
	own, observe, stop, err := buildCheckers(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if own != nil || observe == nil {
		t.Fatalf("own %v, observe %v: want only the observer", own, observe)
	}
	v := checkerVerdict{observe}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		healthy, known, detail := v.ObserveActive("gw1")
		if known {
			if healthy || detail == "" {
				t.Fatalf("nothing answers IKE on 127.0.0.1, yet healthy=%v detail=%q", healthy, detail)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the observer never reached a verdict")
}
