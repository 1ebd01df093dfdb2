package webhook_test

import (
	"crypto/hmac"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/allocguard"
	"github.com/handoffvpn/handoff/operator/webhook"
)

// fuzzNowUnix is the receiver's clock in FuzzVerify: the seeds in
// testdata/fuzz/FuzzVerify are signed around it.
const fuzzNowUnix = 1_800_000_000

// FuzzVerify: whatever a sender puts in the headers and body, Verify
// accepts it only when one of the comma-separated signatures is the HMAC of
// this timestamp and body under the secret, and the timestamp is within the
// tolerance; it never panics nor allocates beyond the input.
func FuzzVerify(f *testing.F) {
	fuzzNow := time.Unix(fuzzNowUnix, 0)
	secret := "fuzz-secret-0123456789"
	ts := strconv.FormatInt(fuzzNow.Unix(), 10)
	body := `{"kind":"failover.completed","node":"gw2"}`
	good := webhook.Sign([]byte(secret), ts, []byte(body))
	f.Add(secret, ts, good, []byte(body))
	f.Add(secret, ts, "v1=00,"+good, []byte(body))
	f.Add(secret, strconv.FormatInt(fuzzNow.Add(-time.Hour).Unix(), 10), good, []byte(body))
	f.Add(secret, ts, good, []byte(body+" "))
	f.Add(secret, "-9223372036854775808", good, []byte(body))
	f.Fuzz(func(t *testing.T, secret, tsHeader, sigHeader string, body []byte) {
		const tolerance = 5 * time.Minute
		var err error
		n := len(secret) + len(tsHeader) + len(sigHeader) + len(body)
		allocguard.Check(t, "Verify", n, func() { err = webhook.Verify([]byte(secret), tsHeader, sigHeader, body, tolerance, fuzzNow) })
		if err != nil {
			if !errors.Is(err, webhook.ErrBadSignature) && !errors.Is(err, webhook.ErrStale) {
				t.Fatalf("Verify error wraps neither ErrBadSignature nor ErrStale: %v", err)
			}
			return
		}
		ts, perr := strconv.ParseInt(tsHeader, 10, 64)
		if perr != nil {
			t.Fatalf("accepted timestamp %q, not Unix seconds", tsHeader)
		}
		if d := fuzzNow.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
			t.Fatalf("accepted timestamp %d, %s from now", ts, d)
		}
		want := webhook.Sign([]byte(secret), tsHeader, body)
		matched := false
		for _, s := range strings.Split(sigHeader, ",") {
			matched = matched || hmac.Equal([]byte(strings.TrimSpace(s)), []byte(want))
		}
		if !matched {
			t.Fatalf("accepted signature header %q for a body whose signature is %s", sigHeader, want)
		}
	})
}
