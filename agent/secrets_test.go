package agent_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/memdp"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

// TestNoPlaintextKeyAtRestOrInLogs replicates SAs with recognisable keys,
// fails over (which decrypts and installs them), snapshots, and then looks
// for any key, raw or hex or base64, in every file of every data directory
// and in every log line at debug level. Files must be owner-only.
func TestNoPlaintextKeyAtRestOrInLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: in-process cluster tests are not run with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logs := &lockedBuffer{}
	dir := t.TempDir()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs("gw1", "gw2", "gw3"), Dir: dir, Resources: resources,
		HeartbeatTimeout: 250 * time.Millisecond, TrailingLogs: 1,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, act, err := c.WaitActive(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	sas := memdp.Synthetic(64, c.VIP)
	var keys [][]byte
	for i, s := range sas {
		for j, st := range []*[]byte{&s.In.AEAD.Key, &s.Out.AEAD.Key} {
			k := []byte(fmt.Sprintf("SECRET-KEY-%04d-%d", i, j))
			*st = k
			keys = append(keys, k)
		}
	}
	first.DP.Add(sas...)
	tctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Traffic(tctx, 2*time.Millisecond, 1)
	e := &env{t: t, c: c, ctx: ctx}
	e.waitReplicated(len(sas))
	for _, n := range c.Nodes() {
		if err := n.Store.TakeSnapshot(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Kill(first.Spec.ID); err != nil {
		t.Fatal(err)
	}
	next, _, err := c.WaitActive(ctx, act.Term, first.Spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(next.DP.Outbound()) != len(sas) {
		t.Fatalf("new active carries %d SAs, want %d", len(next.DP.Outbound()), len(sas))
	}
	if err := next.Store.TakeSnapshot(); err != nil {
		t.Fatal(err)
	}
	stop()
	c.Close()

	needles := func(k []byte) [][]byte {
		return [][]byte{k, []byte(hex.EncodeToString(k)), []byte(base64.StdEncoding.EncodeToString(k)[:20])}
	}
	files := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if info.Mode().Perm()&0o077 != 0 && path != dir {
				t.Errorf("directory %s has mode %s, want owner-only", path, info.Mode().Perm())
			}
			return nil
		}
		files++
		if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("file %s has mode %s, want 0600", path, info.Mode().Perm())
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, k := range keys {
			for _, n := range needles(k) {
				if bytes.Contains(data, n) {
					t.Fatalf("key %q found in plaintext in %s", k, path)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 6 {
		t.Fatalf("only %d files in the data directories: the test looked at nothing", files)
	}
	logged := logs.Bytes()
	if len(logged) == 0 {
		t.Fatal("no log output captured: the test looked at nothing")
	}
	for _, k := range keys {
		for _, n := range needles(k) {
			if bytes.Contains(logged, n) {
				t.Fatalf("key %q found in the logs", k)
			}
		}
	}
	t.Logf("scanned %d files and %d bytes of logs for %d keys", files, len(logged), len(keys))
	// The scan would have caught a key: the SA's own String() is what a
	// careless log line would print, and it must not contain the key.
	if s := fmt.Sprintf("%v %+v %#v", sas[0], sas[0].In.AEAD, *sas[0].In.AEAD); bytes.Contains([]byte(s), keys[0]) {
		t.Fatalf("formatting an SA prints its key: %s", s)
	}
}
