package vicitest_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/vici/vicitest"
)

// lockedBuffer is the transcript the recorder writes into.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRecordThenReplay records a session through the proxy (with a
// handler-driven server standing in for charon) and replays the recording
// to the same client calls: the transcript must be complete and exact.
func TestRecordThenReplay(t *testing.T) {
	dir, err := os.MkdirTemp("", "rec")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ike := &vicitest.Msg{Items: []vicitest.Item{{Key: "gw", Section: &vicitest.Msg{Items: []vicitest.Item{
		{Key: "uniqueid", Value: "4"}, {Key: "remote-host", Value: "203.0.113.2"},
		{Key: "local-vips", IsList: true, List: []string{"198.51.100.1"}}}}}}}
	upstream, err := vicitest.NewServer(filepath.Join(dir, "charon.vici"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	upstream.Handle("list-sas", func(*vicitest.Msg) ([]*vicitest.Msg, *vicitest.Msg) { return []*vicitest.Msg{ike, ike}, nil })
	upstream.Handle("version", func(*vicitest.Msg) ([]*vicitest.Msg, *vicitest.Msg) {
		return nil, &vicitest.Msg{Items: []vicitest.Item{{Key: "version", Value: "5.9.8"}}}
	})

	session := func(t *testing.T, sock string, push func()) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := vici.New(vici.Config{Socket: sock})
		defer c.Close()
		sub, err := c.Subscribe(ctx, vici.IKEUpdown)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if v, err := c.Version(ctx); err != nil || v.Version != "5.9.8" {
			t.Fatalf("version %+v %v", v, err)
		}
		sas, err := c.ListSAs(ctx, vici.ListFilter{IKE: "gw"})
		if err != nil || len(sas) != 2 || sas[0].LocalVIPs[0] != "198.51.100.1" {
			t.Fatalf("list-sas %+v %v", sas, err)
		}
		push()
		ev, err := sub.Next(ctx)
		if err != nil || !ev.Up || ev.IKE.UniqueID != 4 {
			t.Fatalf("event %+v %v", ev, err)
		}
	}

	var rec lockedBuffer
	r, err := vicitest.NewRecorder(filepath.Join(dir, "rec.vici"), upstream.Path(), &rec)
	if err != nil {
		t.Fatal(err)
	}
	up := &vicitest.Msg{Items: append([]vicitest.Item{{Key: "up", Value: "yes"}}, ike.Items...)}
	session(t, filepath.Join(dir, "rec.vici"), func() { upstream.Push("ike-updown", up) })
	// Let the pushed event reach the transcript before closing.
	for i := 0; i < 100 && !strings.Contains(rec.String(), "! ike-updown"); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	text := rec.String()
	for _, want := range []string{"> version {}", "< response {\n  version = 5.9.8", "> list-sas {\n  ike = gw", "< list-sa {", "local-vips = [\n      198.51.100.1", "! ike-updown {"} {
		if !strings.Contains(text, want) {
			t.Fatalf("transcript lacks %q:\n%s", want, text)
		}
	}

	steps, err := vicitest.ParseTranscript(text)
	if err != nil {
		t.Fatal(err)
	}
	replay, err := vicitest.NewServer(filepath.Join(dir, "replay.vici"), steps)
	if err != nil {
		t.Fatal(err)
	}
	defer replay.Close()
	session(t, replay.Path(), func() {})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := replay.WaitDone(ctx); err != nil {
		t.Fatal(err)
	}
	if err := replay.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestParseTranscriptErrors(t *testing.T) {
	for _, bad := range []string{"list-sas", "> x {\n a = b\n", "> x {\n novalue\n}"} {
		if _, err := vicitest.ParseTranscript(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}
