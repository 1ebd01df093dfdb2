package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// responseError builds the error the SDK returns for an ARM answer.
func responseError(status int, body string) error {
	req := &http.Request{Method: http.MethodPut, URL: &url.URL{Scheme: "https", Host: "management.azure.com", Path: "/subscriptions/s/x"}}
	return runtime.NewResponseError(&http.Response{
		StatusCode: status, Status: http.StatusText(status), Request: req,
		Header: http.Header{"Content-Type": []string{"application/json"}},
		Body:   io.NopCloser(strings.NewReader(body)),
	})
}

func armError(code, msg string) string {
	return fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`, code, msg)
}

// TestAzureTranslateErrors maps every ARM failure the provider meets to its
// sentinel, keeps the SDK error reachable and puts ARM's message in the text.
func TestAzureTranslateErrors(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		want   error // nil: no sentinel
		inText string
	}{
		{"403 AuthorizationFailed", responseError(403, armError("AuthorizationFailed", "does not have authorization to perform action 'Microsoft.Network/networkInterfaces/write'")), providers.ErrPermission, "networkInterfaces/write"},
		{"403 LinkedAuthorizationFailed", responseError(403, armError("LinkedAuthorizationFailed", "join/action")), providers.ErrPermission, "LinkedAuthorizationFailed"},
		{"401 expired token", responseError(401, armError("ExpiredAuthenticationToken", "expired")), providers.ErrPermission, "HTTP 401"},
		{"429", responseError(429, armError("TooManyRequests", "throttled")), providers.ErrThrottled, "TooManyRequests"},
		{"412 If-Match", responseError(412, armError("PreconditionFailed", "etag")), providers.ErrConflict, "PreconditionFailed"},
		{"409 busy", responseError(409, armError("AnotherOperationInProgress", "busy")), providers.ErrConflict, "busy"},
		{"400 in use", responseError(400, armError("PublicIPAddressInUse", "referenced by")), providers.ErrConflict, "referenced by"},
		{"404", responseError(404, armError("ResourceNotFound", "not found")), providers.ErrNotFound, "not found"},
		{"500", responseError(500, armError("InternalServerError", "oops")), providers.ErrUnavailable, "HTTP 500"},
		{"503 without body", responseError(503, ""), providers.ErrUnavailable, "HTTP 503"},
		{"failed operation status", responseError(200, `{"status":"Failed","error":{"code":"InternalServerError","message":"try again"}}`), providers.ErrUnavailable, "try again"},
		{"400 bad request is final", responseError(400, armError("InvalidRequestFormat", "bad prefix")), nil, "bad prefix"},
		{"try timeout", fmt.Errorf("put: %w", context.DeadlineExceeded), providers.ErrUnavailable, "timed out"},
	}
	sentinels := []error{providers.ErrPermission, providers.ErrThrottled, providers.ErrConflict, providers.ErrNotFound, providers.ErrUnavailable, providers.ErrStaleTerm}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := translate(c.err)
			for _, s := range sentinels {
				if is := errors.Is(got, s); is != (s == c.want) {
					t.Errorf("errors.Is(%v, %v) = %v", got, s, is)
				}
			}
			if !strings.Contains(got.Error(), c.inText) {
				t.Errorf("error text %q lacks %q", got, c.inText)
			}
			var re *azcore.ResponseError
			if strings.HasPrefix(c.name, "try") == errors.As(got, &re) {
				t.Errorf("errors.As(*azcore.ResponseError) = %v", !strings.HasPrefix(c.name, "try"))
			}
		})
	}
	if err := translate(context.Canceled); !errors.Is(err, context.Canceled) || errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("translate(context.Canceled) = %v, want the cancellation unchanged", err)
	}
}

// TestAzureRetryableOnlyConflictsAndFailedOperations: the provider's own
// pass loop retries lost ETag races and failed operations, never what the
// SDK pipeline already retried or what retrying cannot fix.
func TestAzureRetryableOnlyConflictsAndFailedOperations(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{translate(responseError(412, armError("PreconditionFailed", ""))), true},
		{translate(responseError(409, armError("AnotherOperationInProgress", ""))), true},
		{&operationError{err: translate(responseError(200, `{"status":"Failed","error":{"code":"InternalServerError"}}`))}, true},
		{&operationError{err: translate(responseError(200, `{"status":"Failed","error":{"code":"InvalidRequestFormat"}}`))}, false},
		{translate(responseError(500, "")), false},
		{translate(responseError(429, "")), false},
		{translate(responseError(403, armError("AuthorizationFailed", ""))), false},
		{fmt.Errorf("x: %w", providers.ErrStaleTerm), false},
	} {
		if got := retryable(c.err); got != c.want {
			t.Errorf("retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestAzureBackoffJitterAndCap checks the pass backoff doubles, spreads
// over [d/2, d] and never passes the cap.
func TestAzureBackoffJitterAndCap(t *testing.T) {
	tu := tuning{backoffBase: 100 * time.Millisecond, backoffMax: time.Second}
	for attempt := 1; attempt <= 8; attempt++ {
		d := min(tu.backoffBase<<(attempt-1), tu.backoffMax)
		seen := map[time.Duration]bool{}
		for range 200 {
			got := tu.backoff(attempt)
			if got < d/2 || got > d {
				t.Fatalf("backoff(%d) = %v, outside [%v, %v]", attempt, got, d/2, d)
			}
			seen[got] = true
		}
		if len(seen) < 100 {
			t.Fatalf("backoff(%d) took only %d distinct values in 200 draws: no jitter", attempt, len(seen))
		}
	}
}

// tunedProvider builds node's provider with settings changed by edit.
func tunedProvider(t *testing.T, fx *Fixture, node string, edit func(*Settings)) *Provider {
	t.Helper()
	s := fx.Settings(node)
	edit(&s)
	p, err := New(testCtx(t), node, s)
	if err != nil {
		t.Fatalf("building the provider: %v", err)
	}
	return p
}

// TestAzureRetryPolicy drives the SDK pipeline's retries and the
// provider's pass loop against the emulator's faults.
func TestAzureRetryPolicy(t *testing.T) {
	const opTableRead = "Microsoft.Network/routeTables/read"
	t.Run("PersistentServerErrorBounded", func(t *testing.T) {
		fx := newFixture(t, "a", "b")
		b := mustProvider(t, fx, "b")
		g := fx.Emulator.Gate()
		g.Inject(emulator.Fault{Kind: emulator.ServerError, Cloud: "azure", Op: opRouteWrite})
		before := g.Calls("azure", opRouteWrite)
		start := time.Now()
		err := b.Claim(testCtx(t), 2, fx.Routes[:1])
		if !errors.Is(err, providers.ErrUnavailable) {
			t.Fatalf("claim under a persistent 500: %v, want ErrUnavailable", err)
		}
		if calls := g.Calls("azure", opRouteWrite) - before; calls != 5 {
			t.Fatalf("route write tried %d times, want max_attempts = 5", calls)
		}
		if !strings.Contains(err.Error(), "rt-inside/routes/"+fx.RouteName) {
			t.Fatalf("error %q does not name the route", err)
		}
		t.Logf("gave up after %v", time.Since(start))
	})
	t.Run("PermissionNotRetried", func(t *testing.T) {
		fx := newFixture(t, "a", "b")
		b := mustProvider(t, fx, "b")
		g := fx.Emulator.Gate()
		g.Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "azure", Op: opRouteWrite})
		err := b.Claim(testCtx(t), 2, fx.Routes[:1])
		if !errors.Is(err, providers.ErrPermission) || !strings.Contains(err.Error(), "AuthorizationFailed") {
			t.Fatalf("claim without permission: %v, want ErrPermission with ARM's code", err)
		}
		if calls := g.Calls("azure", opRouteWrite); calls != 1 {
			t.Fatalf("route write tried %d times under a permission error, want 1", calls)
		}
	})
	t.Run("LostETagRaceRereads", func(t *testing.T) {
		fx := newFixture(t, "a", "b")
		b := mustProvider(t, fx, "b")
		g := fx.Emulator.Gate()
		reads := g.Calls("azure", opTableRead)
		g.Inject(emulator.Fault{Kind: emulator.StaleFingerprint, Cloud: "azure", Op: opRouteWrite, Times: 1})
		if err := b.Claim(testCtx(t), 2, fx.Routes[:1]); err != nil {
			t.Fatalf("claim after one 412: %v", err)
		}
		if got := g.Calls("azure", opTableRead) - reads; got != 2 {
			t.Fatalf("route table read %d times, want 2 (a fresh read after the 412)", got)
		}
		if hop, _, _ := fx.Emulator.Azure.RouteNextHop(fx.RouteTableIDs[0], fx.RouteName); hop != fx.Nodes["b"].PrivateIP {
			t.Fatalf("next hop %s, want b's %s", hop, fx.Nodes["b"].PrivateIP)
		}
	})
	t.Run("TimeoutRetried", func(t *testing.T) {
		fx := newFixture(t, "a", "b")
		b := tunedProvider(t, fx, "b", func(s *Settings) { s.CallTimeout = "150ms" })
		g := fx.Emulator.Gate()
		g.Inject(emulator.Fault{Kind: emulator.Timeout, Cloud: "azure", Op: opRouteWrite, Times: 1})
		if err := b.Claim(testCtx(t), 2, fx.Routes[:1]); err != nil {
			t.Fatalf("claim after one hung call: %v", err)
		}
		if calls := g.Calls("azure", opRouteWrite); calls != 2 {
			t.Fatalf("route write tried %d times, want 2 (one timed out)", calls)
		}
	})
	t.Run("RetryAfterBeyondCapNotRetried", func(t *testing.T) {
		fx := newFixture(t, "a", "b")
		b := mustProvider(t, fx, "b") // backoff_max 200ms
		fx.Emulator.Azure.SetRetryAfter(time.Second)
		g := fx.Emulator.Gate()
		g.Inject(emulator.Fault{Kind: emulator.Throttle, Cloud: "azure", Op: opRouteWrite})
		start := time.Now()
		err := b.Claim(testCtx(t), 2, fx.Routes[:1])
		if !errors.Is(err, providers.ErrThrottled) {
			t.Fatalf("claim throttled for longer than backoff_max: %v, want ErrThrottled", err)
		}
		if calls := g.Calls("azure", opRouteWrite); calls != 1 {
			t.Fatalf("route write tried %d times, want 1: Retry-After exceeds backoff_max", calls)
		}
		if d := time.Since(start); d > 900*time.Millisecond {
			t.Fatalf("claim waited %v for a Retry-After it does not honour", d)
		}
	})
	t.Run("LongRunningOperationPolled", func(t *testing.T) {
		fx := newFixture(t, "a", "b")
		b := mustProvider(t, fx, "b") // poll_interval 10ms
		fx.Emulator.Azure.SetOperationDuration(60 * time.Millisecond)
		g := fx.Emulator.Gate()
		polls := g.Calls("azure", "Microsoft.Network/locations/operations/read")
		if err := b.Claim(testCtx(t), 2, fx.Routes[:1]); err != nil {
			t.Fatalf("claim with a 60 ms operation: %v", err)
		}
		if got := g.Calls("azure", "Microsoft.Network/locations/operations/read") - polls; got < 3 {
			t.Fatalf("operation status polled %d times, want several while InProgress", got)
		}
		if h, err := b.Owner(testCtx(t), fx.Routes[0]); err != nil || h.Node != "b" {
			t.Fatalf("owner after the operation = %+v (%v), want b", h, err)
		}
	})
}
