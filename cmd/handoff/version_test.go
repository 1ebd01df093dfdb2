package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/buildinfo"
)

// TestMakeBuildStampsOneVersion builds the binary as `make build` does,
// with VERSION set, and checks that `handoff version`, a running agent's
// /v1/status, its own entry in /v1/members and handoff_build_info all
// report that version: a rolling upgrade is followed by comparing them.
func TestMakeBuildStampsOneVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: builds the binary and starts an agent; not with -short")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("SKIP: make not installed")
	}
	const stamp = "v9.8.7-test"
	dir := t.TempDir()
	bin := filepath.Join(dir, "handoff")
	build := exec.Command("make", "-C", filepath.Join("..", ".."), "build", "BIN="+bin, "VERSION="+stamp)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}

	out, err := exec.Command(bin, "version", "-json").Output()
	if err != nil {
		t.Fatalf("handoff version -json: %v", err)
	}
	var v buildinfo.Info
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("handoff version -json: %v\n%s", err, out)
	}
	if v.Version != stamp || v.GoVersion == "" {
		t.Fatalf("handoff version says %+v, want version %s", v, stamp)
	}
	if line, _ := exec.Command(bin, "version").Output(); !strings.HasPrefix(string(line), "handoff "+stamp) {
		t.Errorf("handoff version: %q", line)
	}

	// The same binary as an agent: a bootstrapped single node with its API
	// on a free port.
	var setup bytes.Buffer
	for _, args := range [][]string{{"tls", "ca", "-out", dir}, {"tls", "cert", "-ca", dir, "-node", "gw1", "-hosts", "127.0.0.1", "-out", dir},
		{"keygen", "-out", filepath.Join(dir, "k")}} {
		if err := run(context.Background(), args, &setup, &setup); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "gw1.yaml")
	src := "node_id: gw1\nbind_addr: 127.0.0.1:0\nadvertise_addr: 127.0.0.1:7\nbootstrap: true\ndata_dir: " + filepath.Join(dir, "data") +
		"\ncluster_key_file: " + filepath.Join(dir, "k") + "\ntls:\n  ca: " + filepath.Join(dir, "ca.pem") +
		"\n  cert: " + filepath.Join(dir, "gw1.pem") + "\n  key: " + filepath.Join(dir, "gw1-key.pem") +
		"\nscheduling:\n  realtime_priority: 0\n  lock_memory: false\n"
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	ag := exec.CommandContext(ctx, bin, "agent", "-config", cfg, "-api-addr", "127.0.0.1:0")
	ag.Stdout, ag.Stderr = io.Discard, logs
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = ag.Wait() }()
	urlRE := regexp.MustCompile(`msg="API listening".*url=(http://\S+)`)
	var base string
	waitUntil(t, "the agent's API", func() bool {
		if m := urlRE.FindStringSubmatch(logs.String()); m != nil {
			base = m[1]
			return true
		}
		return false
	})
	var st agent.Status
	waitUntil(t, "the agent to record its member entry", func() bool {
		st = agent.Status{}
		if getJSON(t, base+"/v1/status", &st) != nil {
			return false
		}
		return len(st.Members) == 1 && st.Members[0].Version != ""
	})
	if st.Version != v.Version || st.Build != v {
		t.Errorf("/v1/status says version %q, build %+v; handoff version says %+v", st.Version, st.Build, v)
	}
	if st.Members[0].Version != stamp {
		t.Errorf("the agent's member entry says version %q, want %s", st.Members[0].Version, stamp)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `handoff_build_info{goversion="` + v.GoVersion + `",revision="` + v.Revision + `",version="` + stamp + `"} 1`; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(string(metrics), "handoff_build_info"))
	}
}

func getJSON(t *testing.T, url string, out any) error {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
