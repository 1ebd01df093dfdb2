package healthcheck_test

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/healthcheck"
	"github.com/handoffvpn/handoff/healthcheck/ikeprobe"
	"github.com/handoffvpn/handoff/healthcheck/local"
	"github.com/handoffvpn/handoff/healthcheck/tunnel"
	"github.com/handoffvpn/handoff/lab/hostlab"
)

// Schedule of the lab tests: a dead gateway must be declared unhealthy
// within about fall × interval (+ one timeout when probes time out rather
// than being refused), a recovered one healthy within rise × interval.
const (
	labInterval = 200 * time.Millisecond
	labTimeout  = 150 * time.Millisecond
	labRise     = 2
	labFall     = 3
)

// watcher records transitions from a Checker with wall-clock arrival.
type watcher struct {
	t  testing.TB
	ch chan healthcheck.Transition
}

func newWatcher(t testing.TB) *watcher {
	return &watcher{t: t, ch: make(chan healthcheck.Transition, 256)}
}

func (w *watcher) notify(tr healthcheck.Transition) { w.ch <- tr }

// waitOverall waits for the overall verdict to become to and returns that
// transition with the per-check transitions seen on the way. limit is a
// functional bound (the run is broken if it passes), not a timing target.
func (w *watcher) waitOverall(to healthcheck.State, limit time.Duration) (healthcheck.Transition, []healthcheck.Transition) {
	w.t.Helper()
	var checks []healthcheck.Transition
	deadline := time.After(limit)
	for {
		select {
		case tr := <-w.ch:
			if !tr.IsOverall() {
				checks = append(checks, tr)
				continue
			}
			if tr.To == to {
				return tr, checks
			}
		case <-deadline:
			w.t.Fatalf("overall verdict did not become %v within %v (check transitions %+v)", to, limit, checks)
		}
	}
}

// waitChecks continues after waitOverall until n distinct checks have
// reached to, and returns every check transition to it.
func (w *watcher) waitChecks(seen []healthcheck.Transition, to healthcheck.State, n int, limit time.Duration) []healthcheck.Transition {
	w.t.Helper()
	var out []healthcheck.Transition
	names := map[string]bool{}
	add := func(tr healthcheck.Transition) {
		if !tr.IsOverall() && tr.To == to && !names[tr.Check] {
			names[tr.Check] = true
			out = append(out, tr)
		}
	}
	for _, tr := range seen {
		add(tr)
	}
	deadline := time.After(limit)
	for len(names) < n {
		select {
		case tr := <-w.ch:
			add(tr)
		case <-deadline:
			w.t.Fatalf("only %d of %d checks became %v within %v: %+v", len(names), n, to, limit, out)
		}
	}
	return out
}

func specs(checks ...healthcheck.Check) []healthcheck.Spec {
	var out []healthcheck.Spec
	for _, c := range checks {
		out = append(out, healthcheck.Spec{Check: c, Interval: labInterval, Timeout: labTimeout, Rise: labRise, Fall: labFall})
	}
	return out
}

// gatewayChecks are the checks a standby (IKE probes from the client
// namespace) and the gateway itself (VICI, process) run.
func gatewayChecks(t testing.TB, site *hostlab.Site, gw *hostlab.Charon) []healthcheck.Check {
	t.Helper()
	var checks []healthcheck.Check
	for _, port := range []uint16{500, 4500} {
		p, err := ikeprobe.New(ikeprobe.Config{Target: netip.AddrPortFrom(hostlab.GatewayOuter, port), Dial: site.Client.DialContext})
		if err != nil {
			t.Fatal(err)
		}
		checks = append(checks, p)
	}
	checks = append(checks,
		local.NewVICI(gw.Socket()),
		&local.Process{PID: func() (int, error) { return gw.PID(), nil }, Comm: "charon-systemd"},
	)
	return checks
}

// TestPrivilegedCharonDetection runs the IKE (500 and 4500), VICI and
// process checks against a real charon, stops it with SIGSTOP, continues
// it, kills it and starts it again, and logs how long each verdict took.
func TestPrivilegedCharonDetection(t *testing.T) {
	lab := hostlab.New(t)
	site := lab.NewSite()
	gw := lab.StartCharon(site.Gateway, "gw", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl()})
	w := newWatcher(t)
	c, err := healthcheck.New(specs(gatewayChecks(t, site, gw)...), healthcheck.WithNotify(w.notify))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	downBound := labFall*labInterval + labTimeout
	upBound := labRise * labInterval
	limit := 10 * (downBound + upBound)
	// The promise: unhealthy within fall × interval (+ the timeout of the
	// last probe), healthy again within rise × interval. A fault lands
	// anywhere in a probe's interval, so one interval more is allowed,
	// and 300 ms for a loaded two-core machine's scheduling.
	const slack = labInterval + 300*time.Millisecond
	w.waitOverall(healthcheck.StateHealthy, limit)

	fall := func(what string, act func() error) {
		t.Helper()
		start := time.Now()
		if err := act(); err != nil {
			t.Fatal(err)
		}
		tr, seen := w.waitOverall(healthcheck.StateUnhealthy, limit)
		took := tr.At.Sub(start)
		t.Logf("%s: gateway unhealthy after %v (fall×interval+timeout = %v)", what, took.Round(time.Millisecond), downBound)
		if took > downBound+slack {
			t.Errorf("%s: unhealthy after %v, want within fall×interval+timeout = %v (+%v slack)", what, took.Round(time.Millisecond), downBound, slack)
		}
		for _, ct := range w.waitChecks(seen, healthcheck.StateUnhealthy, len(c.Status().Checks), limit) {
			if ct.Streak != labFall {
				t.Errorf("%s: check %s fell after %d failures, want %d", what, ct.Check, ct.Streak, labFall)
			}
			t.Logf("  %-22s unhealthy after %v: %v", ct.Check, ct.At.Sub(start).Round(time.Millisecond), ct.Err)
		}
	}
	rise := func(what string, act func() error) {
		t.Helper()
		if err := act(); err != nil {
			t.Fatal(err)
		}
		// From when charon is back (a restart returns once it answers).
		start := time.Now()
		tr, _ := w.waitOverall(healthcheck.StateHealthy, limit)
		took := tr.At.Sub(start)
		t.Logf("%s: gateway healthy after %v (rise×interval = %v)", what, took.Round(time.Millisecond), upBound)
		if took > upBound+slack {
			t.Errorf("%s: healthy after %v, want within rise×interval = %v (+%v slack)", what, took.Round(time.Millisecond), upBound, slack)
		}
		if st := c.Status(); st.Healthy() != len(st.Checks) {
			t.Errorf("%s: overall healthy with checks %+v", what, st.Checks)
		}
	}

	fall("SIGSTOP", func() error { return gw.Signal(syscall.SIGSTOP) })
	// A stopped charon still has its sockets: the probes must have timed
	// out, not been refused.
	if st := c.Status(); !errors.Is(st.Checks[0].LastErr, ikeprobe.ErrNoReply) {
		t.Errorf("IKE probe against a stopped charon: %v", st.Checks[0].LastErr)
	}
	rise("SIGCONT", func() error { return gw.Signal(syscall.SIGCONT) })
	fall("SIGKILL", gw.Kill)
	if st := c.Status(); !errors.Is(st.Checks[0].LastErr, ikeprobe.ErrUnreachable) {
		t.Errorf("IKE probe against a dead charon: %v", st.Checks[0].LastErr)
	}
	rise("restart", func() error { return gw.Start(context.Background()) })
}

// TestPrivilegedTunnelReachability brings up a real tunnel from the client
// namespace, checks it with an ICMP echo from the client's protected
// address to the host behind the gateway and with the client's CHILD_SA
// counters, then stops the responder and continues it.
func TestPrivilegedTunnelReachability(t *testing.T) {
	lab := hostlab.New(t)
	site := lab.NewSite()
	gw := lab.StartCharon(site.Gateway, "gw", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl()})
	// DPD far off: the test decides when the responder is gone.
	client := lab.StartCharon(site.Client, "client", hostlab.CharonConfig{Swanctl: hostlab.ClientSwanctl("60s")})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := client.Initiate(ctx, "client"); err != nil {
		t.Fatalf("initiating: %v\n%s", err, gw.LogTail(20))
	}

	echo, err := tunnel.NewEcho(tunnel.EchoConfig{
		Target: hostlab.InsideHost, Source: hostlab.ClientInner,
		Count: 3, Gap: 20 * time.Millisecond,
		ListenPacket: site.Client.ListenPacket,
	})
	if err != nil {
		t.Fatal(err)
	}
	counters, err := tunnel.NewCounters(tunnel.CountersConfig{Socket: client.Socket(), IKE: "client", Child: "client"})
	if err != nil {
		t.Fatal(err)
	}
	// Direct runs first: the echo passes, and the counters the echo moved
	// are visible over VICI.
	if err := echo.Run(ctx); err != nil {
		t.Fatalf("echo through the tunnel: %v", err)
	}
	cs, err := tunnel.ListChildren(ctx, client.Socket(), "client", "client")
	if err != nil || len(cs) != 1 || cs[0].PacketsIn == 0 || cs[0].PacketsOut == 0 {
		t.Fatalf("CHILD_SA counters after an echo: %+v %v", cs, err)
	}

	w := newWatcher(t)
	c, err := healthcheck.New(specs(echo, counters), healthcheck.WithNotify(w.notify))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	limit := 10 * (labFall*labInterval + labTimeout + labRise*labInterval)
	w.waitOverall(healthcheck.StateHealthy, limit)

	start := time.Now()
	if err := gw.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	tr, _ := w.waitOverall(healthcheck.StateUnhealthy, limit)
	t.Logf("responder SIGSTOP: tunnel unhealthy after %v: %v", tr.At.Sub(start).Round(time.Millisecond), tr.Err)
	st := c.Status()
	if !errors.Is(st.Checks[0].LastErr, tunnel.ErrNoEcho) {
		t.Errorf("echo with the responder stopped: %v", st.Checks[0].LastErr)
	}
	// The counters fall too (one interval later at most).
	deadline := time.Now().Add(limit)
	for c.Status().Checks[1].State != healthcheck.StateUnhealthy {
		if time.Now().After(deadline) {
			t.Fatalf("counters check did not fall: %+v", c.Status().Checks[1])
		}
		time.Sleep(labInterval / 4)
	}
	if err := c.Status().Checks[1].LastErr; !errors.Is(err, tunnel.ErrStalled) {
		t.Errorf("counters with the responder stopped: %v", err)
	}

	start = time.Now()
	if err := gw.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	tr, _ = w.waitOverall(healthcheck.StateHealthy, limit)
	t.Logf("responder SIGCONT: tunnel healthy after %v", tr.At.Sub(start).Round(time.Millisecond))
}

// BenchmarkPrivilegedDetection measures, against a real charon, how long
// the Checker takes to declare the gateway unhealthy after SIGSTOP and
// after SIGKILL, and healthy again after SIGCONT and after a restart. The
// targets: fall×interval+timeout (750 ms here) and rise×interval (400 ms).
func BenchmarkPrivilegedDetection(b *testing.B) {
	lab := hostlab.New(b)
	site := lab.NewSite()
	gw := lab.StartCharon(site.Gateway, "gw", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl()})
	w := newWatcher(b)
	c, err := healthcheck.New(specs(gatewayChecks(b, site, gw)...), healthcheck.WithNotify(w.notify))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	limit := 10 * time.Second
	w.waitOverall(healthcheck.StateHealthy, limit)
	measure := func(to healthcheck.State, act func() error) time.Duration {
		start := time.Now()
		if err := act(); err != nil {
			b.Fatal(err)
		}
		tr, _ := w.waitOverall(to, limit)
		return tr.At.Sub(start)
	}
	var stop, cont, kill, restart time.Duration
	b.ResetTimer()
	for range b.N {
		stop += measure(healthcheck.StateUnhealthy, func() error { return gw.Signal(syscall.SIGSTOP) })
		cont += measure(healthcheck.StateHealthy, func() error { return gw.Signal(syscall.SIGCONT) })
		kill += measure(healthcheck.StateUnhealthy, gw.Kill)
		restart += measure(healthcheck.StateHealthy, func() error { return gw.Start(context.Background()) })
	}
	n := float64(b.N)
	b.ReportMetric(float64(stop.Milliseconds())/n, "ms-sigstop-to-unhealthy")
	b.ReportMetric(float64(cont.Milliseconds())/n, "ms-sigcont-to-healthy")
	b.ReportMetric(float64(kill.Milliseconds())/n, "ms-sigkill-to-unhealthy")
	b.ReportMetric(float64(restart.Milliseconds())/n, "ms-restart-to-healthy")
}
