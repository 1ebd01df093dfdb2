package webhook_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/operator/webhook"
)

var secret = []byte("0123456789abcdef-webhook-secret")

// attempt is one delivery as the receiver saw it.
type attempt struct {
	header http.Header
	body   []byte
	err    error // the receiver's verification result
}

// receiver answers the queued statuses in order (then 200) and verifies
// every delivery's signature.
func receiver(t *testing.T, statuses ...int) (*httptest.Server, func() []attempt) {
	var mu sync.Mutex
	var seen []attempt
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		err := webhook.Verify(secret, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body, 5*time.Minute, time.Now())
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, attempt{header: r.Header.Clone(), body: body, err: err})
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if len(statuses) > 0 {
			code := statuses[0]
			statuses = statuses[1:]
			w.WriteHeader(code)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []attempt {
		mu.Lock()
		defer mu.Unlock()
		return append([]attempt(nil), seen...)
	}
}

func waitCounts(t *testing.T, n *webhook.Notifier, cond func(delivered, retried, dead, dropped uint64) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(n.Counts()) {
		if time.Now().After(deadline) {
			d, r, dl, dr := n.Counts()
			t.Fatalf("counts: delivered %d, retried %d, dead %d, dropped %d", d, r, dl, dr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeliverySignedAndRetriedAfter5xx(t *testing.T) {
	srv, seen := receiver(t, http.StatusInternalServerError, http.StatusBadGateway)
	n, err := webhook.New(webhook.Config{URL: srv.URL + "/hook", Secret: secret, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Notify(webhook.Event{Kind: "failover.completed", Node: "gw2", Term: 9, SAs: 1000, Source: "gw2",
		TimingsMs: &webhook.Timings{Detect: 210, Elect: 95, Claim: 4, Install: 30, Move: 80, Total: 419}})
	waitCounts(t, n, func(d, _, _, _ uint64) bool { return d == 1 })
	got := seen()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3 (500, 502, then accepted)", len(got))
	}
	for i, a := range got {
		if a.err != nil {
			t.Errorf("attempt %d: signature: %v", i, a.err)
		}
	}
	if got[0].header.Get(webhook.HeaderDelivery) != got[2].header.Get(webhook.HeaderDelivery) || string(got[0].body) != string(got[2].body) {
		t.Error("a retry is not the same delivery")
	}
	if ct := got[2].header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	if ev := got[2].header.Get(webhook.HeaderEvent); ev != "failover.completed" {
		t.Errorf("event header %q", ev)
	}
	var e webhook.Event
	if err := json.Unmarshal(got[2].body, &e); err != nil {
		t.Fatal(err)
	}
	if e.Kind != "failover.completed" || e.Node != "gw2" || e.TimingsMs == nil || e.TimingsMs.Move != 80 || e.ID == "" || e.At.IsZero() {
		t.Errorf("event = %+v", e)
	}
	want := "handoff: gw2 is active (term 9, 1000 SAs) after 419 ms: detect 210 elect 95 claim 4 install 30 move 80 ms"
	if e.Text != want {
		t.Errorf("text = %q\nwant   %q", e.Text, want)
	}
	if _, retried, dead, dropped := n.Counts(); retried != 2 || dead != 0 || dropped != 0 {
		t.Errorf("retried %d, dead %d, dropped %d", retried, dead, dropped)
	}
}

func TestRefusalIsADeadLetterAndNotRetried(t *testing.T) {
	srv, seen := receiver(t, http.StatusGone)
	n, err := webhook.New(webhook.Config{URL: srv.URL, Secret: secret, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Notify(webhook.Event{Kind: "node.unhealthy", Node: "gw1"})
	waitCounts(t, n, func(_, _, dead, _ uint64) bool { return dead == 1 })
	if len(seen()) != 1 {
		t.Errorf("%d attempts after a 410, want 1", len(seen()))
	}
}

func TestGivesUpAfterMaxAttempts(t *testing.T) {
	srv, seen := receiver(t, 503, 503, 503, 503)
	n, err := webhook.New(webhook.Config{URL: srv.URL, Secret: secret, MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Notify(webhook.Event{Kind: "failover.failed", Node: "gw1", Error: "move: permission denied"})
	waitCounts(t, n, func(_, _, dead, _ uint64) bool { return dead == 1 })
	if len(seen()) != 3 {
		t.Errorf("%d attempts, want 3", len(seen()))
	}
}

func TestFullQueueDropsAndCounts(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // hold the first delivery so the queue fills up
	}))
	defer srv.Close()
	defer close(release)
	n, err := webhook.New(webhook.Config{URL: srv.URL, Secret: secret, QueueSize: 2, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for i := 0; i < 10; i++ {
		n.Notify(webhook.Event{Kind: "node.unhealthy", Node: "gw" + strconv.Itoa(i)})
	}
	// One in flight, two queued, the rest dropped (the first may not yet
	// have left the queue when the loop ran: 7 or 8 dropped).
	_, _, _, dropped := n.Counts()
	if dropped < 7 || dropped > 8 {
		t.Errorf("dropped %d of 10 with a queue of 2", dropped)
	}
}

func TestKindsFilter(t *testing.T) {
	srv, seen := receiver(t)
	n, err := webhook.New(webhook.Config{URL: srv.URL, Secret: secret, Kinds: []string{"failover.failed"}})
	if err != nil {
		t.Fatal(err)
	}
	n.Notify(webhook.Event{Kind: "node.fenced", Node: "gw1"})
	n.Notify(webhook.Event{Kind: "failover.failed", Node: "gw1"})
	waitCounts(t, n, func(d, _, _, _ uint64) bool { return d == 1 })
	n.Close()
	n.Close()
	if got := seen(); len(got) != 1 || got[0].header.Get(webhook.HeaderEvent) != "failover.failed" {
		t.Errorf("deliveries: %d", len(got))
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	body := []byte(`{"kind":"failover.completed"}`)
	sig := webhook.Sign(secret, ts, body)
	if !strings.HasPrefix(sig, "v1=") || len(sig) != 3+64 {
		t.Fatalf("signature %q", sig)
	}
	if err := webhook.Verify(secret, ts, sig, body, time.Minute, now); err != nil {
		t.Errorf("valid signature refused: %v", err)
	}
	if err := webhook.Verify(secret, ts, "v1=00, "+sig, body, time.Minute, now); err != nil {
		t.Errorf("rotation list refused: %v", err)
	}
	for name, c := range map[string]struct {
		secret  []byte
		ts, sig string
		body    []byte
		want    error
	}{
		"tampered body":  {secret, ts, sig, []byte(`{"kind":"failover.failed"}`), webhook.ErrBadSignature},
		"other secret":   {[]byte("another-secret-of-16+"), ts, sig, body, webhook.ErrBadSignature},
		"moved ts":       {secret, strconv.FormatInt(now.Unix()-1, 10), sig, body, webhook.ErrBadSignature},
		"old delivery":   {secret, strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10), webhook.Sign(secret, strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10), body), body, webhook.ErrStale},
		"no timestamp":   {secret, "", sig, body, webhook.ErrBadSignature},
		"bare signature": {secret, ts, strings.TrimPrefix(sig, "v1="), body, webhook.ErrBadSignature},
	} {
		if err := webhook.Verify(c.secret, c.ts, c.sig, c.body, time.Minute, now); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

func TestConfigRefused(t *testing.T) {
	for name, cfg := range map[string]webhook.Config{
		"no url":       {Secret: secret},
		"ftp":          {URL: "ftp://example.com/x", Secret: secret},
		"short secret": {URL: "https://example.com/x", Secret: []byte("short")},
	} {
		if _, err := webhook.New(cfg); !errors.Is(err, webhook.ErrConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestBackoffIsJitteredAndBounded(t *testing.T) {
	lo, hi := 100*time.Millisecond, time.Second
	seen := map[time.Duration]bool{}
	for attempt := 1; attempt <= 8; attempt++ {
		ceil := min(hi, lo<<(attempt-1))
		for i := 0; i < 50; i++ {
			d := webhook.Backoff(attempt, lo, hi)
			if d < lo || d > ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, lo, ceil)
			}
			seen[d] = true
		}
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct waits in 400 draws: not jittered", len(seen))
	}
}
