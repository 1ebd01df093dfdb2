package hostlab

import (
	"context"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPrivilegedSiteTunnel builds the standard site, brings up a tunnel
// from the client to the gateway through two libipsec charons and pings
// the inside host from the client's protected address.
func TestPrivilegedSiteTunnel(t *testing.T) {
	lab := New(t)
	runBefore := listDir(t, "/run")
	site := lab.NewSite()
	gw := lab.StartCharon(site.Gateway, "gw", CharonConfig{Swanctl: GatewaySwanctl()})
	cl := lab.StartCharon(site.Client, "client", CharonConfig{Swanctl: ClientSwanctl("30s")})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.Initiate(ctx, "client"); err != nil {
		t.Fatalf("initiating: %v\n%s\n%s", err, cl.LogTail(30), gw.LogTail(30))
	}
	out, err := site.Client.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", ClientInner.String(), InsideHost.String())
	if err != nil {
		t.Fatalf("pinging through the tunnel: %v\n%s", err, gw.LogTail(20))
	}
	if !strings.Contains(string(out), "3 received") {
		t.Fatalf("ping through the tunnel lost packets:\n%s", out)
	}

	// Two instances must not collide on anything under /run: every path
	// the lab's charons use is under the lab directory.
	if added := diff(listDir(t, "/run"), runBefore); len(added) > 0 {
		t.Errorf("charon created files in /run: %v", added)
	}

	// VICI works over the Session helper.
	sess, err := gw.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ver, err := sess.Call(ctx, "version", nil)
	if err != nil {
		t.Fatalf("vici version: %v", err)
	}
	if d, _ := ver.Get("daemon").(string); d == "" {
		t.Fatalf("vici version has no daemon: %v", ver)
	}
}

// TestPrivilegedCharonKillRestart checks the lifecycle helpers: a killed
// charon leaves its socket behind, Start brings it back with its
// configuration loaded under a new PID, and the lab's cleanup ends a charon
// a test left stopped.
func TestPrivilegedCharonKillRestart(t *testing.T) {
	Require(t)
	var stoppedPID int
	t.Run("lab", func(t *testing.T) {
		lab := New(t)
		ns := lab.Netns("solo")
		ns.IP("addr", "add", GatewayOuter.String()+"/32", "dev", "lo")
		c := lab.StartCharon(ns, "solo", CharonConfig{Swanctl: GatewaySwanctl()})
		first := c.PID()
		if first == 0 {
			t.Fatal("no PID after start")
		}
		if err := c.Kill(); err != nil {
			t.Fatal(err)
		}
		if c.PID() != 0 {
			t.Fatal("PID still set after kill")
		}
		if _, err := os.Stat(c.Socket()); err != nil {
			t.Fatalf("expected the stale VICI socket after SIGKILL: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := c.Start(ctx); err != nil {
			t.Fatalf("restart: %v\n%s", err, c.LogTail(20))
		}
		if c.PID() == first || c.PID() == 0 {
			t.Fatalf("restart PID %d, first %d", c.PID(), first)
		}
		out, err := c.Swanctl(ctx, "--list-conns")
		if err != nil || !strings.Contains(string(out), "gw:") {
			t.Fatalf("connections not reloaded after restart: %v\n%s", err, out)
		}
		if err := c.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stoppedPID = c.PID()
	})
	if stoppedPID != 0 && syscall.Kill(stoppedPID, 0) == nil {
		t.Errorf("stopped charon pid %d still alive after the lab's cleanup", stoppedPID)
	}
}

// TestPrivilegedCleanupRemovesNamespaces checks that a sub-lab's namespaces
// are gone once its test ended.
func TestPrivilegedCleanupRemovesNamespaces(t *testing.T) {
	Require(t)
	var name string
	t.Run("lab", func(t *testing.T) {
		lab := New(t)
		name = lab.Netns("tmp").Name()
		if _, err := os.Stat("/run/netns/" + name); err != nil {
			t.Fatalf("namespace not created: %v", err)
		}
	})
	if _, err := os.Stat("/run/netns/" + name); err == nil {
		t.Fatalf("namespace %s left behind", name)
	}
}

// TestPrivilegedNetnsDial checks that sockets made by Do live in the
// namespace: a listener there is reachable from a dial there, and not from
// the host (which has no route to the lab's addresses).
func TestPrivilegedNetnsDial(t *testing.T) {
	lab := New(t)
	a, b := lab.Netns("a"), lab.Netns("b")
	lab.Veth(a, "v0", "198.18.0.1/24", b, "v0", "198.18.0.2/24")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, err := b.ListenPacket(ctx, "udp4", "198.18.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := a.DialContext(ctx, "udp4", "198.18.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("reading in namespace b: %v", err)
	}
	if string(buf[:n]) != "hello" || from.(*net.UDPAddr).IP.String() != "198.18.0.1" {
		t.Fatalf("got %q from %v", buf[:n], from)
	}
}

func listDir(t *testing.T, dir string) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	m := make(map[string]bool, len(ents))
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

func diff(now, before map[string]bool) []string {
	var added []string
	for n := range now {
		if !before[n] && n != "netns" {
			added = append(added, n)
		}
	}
	return added
}

// TestMissingTools checks what Require reports (and, as root, fails on)
// when strongSwan is not installed; it runs without root.
func TestMissingTools(t *testing.T) {
	look := func(name string) (string, error) {
		if name == "charon-systemd" {
			return "", os.ErrNotExist
		}
		return "/usr/bin/" + name, nil
	}
	got := missingTools(look, func(string) (os.FileInfo, error) { return nil, os.ErrNotExist })
	if len(got) != 2 || got[0] != "charon-systemd" || !strings.HasPrefix(got[1], "/dev/net/tun") {
		t.Fatalf("missing %v", got)
	}
	if got := missingTools(lookPath, os.Stat); os.Geteuid() == 0 && len(got) != 0 {
		t.Fatalf("this root host lacks %v", got)
	}
}
