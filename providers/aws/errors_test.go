package aws

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/handoffvpn/handoff/providers"
)

// apiErr builds the error the EC2 client returns for an error answer:
// an OperationError around the AWS ResponseError around the API error.
func apiErr(status int, code string) error {
	return &smithy.OperationError{ServiceID: "EC2", OperationName: "AssociateAddress", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      &smithy.GenericAPIError{Code: code, Message: "from the test"},
		},
		RequestID: "req-1",
	}}
}

// sendErr builds the error for a request that got no answer.
func sendErr(inner error) error {
	return &smithy.OperationError{ServiceID: "EC2", OperationName: "ReplaceRoute", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{}},
			Err:      &smithyhttp.RequestSendError{Err: &url.Error{Op: "Post", URL: "https://ec2", Err: inner}},
		},
	}}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestAWSErrorTranslation(t *testing.T) {
	cases := []struct {
		name  string
		err   error
		want  error // nil: no sentinel
		retry bool
	}{
		{"throttled 503", apiErr(503, "RequestLimitExceeded"), providers.ErrThrottled, true},
		{"throttled 400", apiErr(400, "Throttling"), providers.ErrThrottled, true},
		{"internal error", apiErr(500, "InternalError"), providers.ErrUnavailable, true},
		{"unavailable", apiErr(503, "Unavailable"), providers.ErrUnavailable, true},
		{"unknown 502", apiErr(502, "SomethingNew"), providers.ErrUnavailable, true},
		{"unauthorized", apiErr(403, "UnauthorizedOperation"), providers.ErrPermission, false},
		{"auth failure", apiErr(401, "AuthFailure"), providers.ErrPermission, false},
		{"forbidden without code", apiErr(403, ""), providers.ErrPermission, false},
		{"allocation not found", apiErr(400, "InvalidAllocationID.NotFound"), providers.ErrNotFound, false},
		{"route not found", apiErr(400, "InvalidRoute.NotFound"), providers.ErrNotFound, false},
		{"already associated", apiErr(400, "Resource.AlreadyAssociated"), providers.ErrConflict, false},
		{"address in use", apiErr(400, "PrivateIpAddressInUse"), providers.ErrConflict, false},
		{"bad parameter", apiErr(400, "InvalidParameterValue"), nil, false},
		{"attempt timeout", sendErr(timeoutErr{}), providers.ErrUnavailable, true},
		{"client timeout", sendErr(context.DeadlineExceeded), providers.ErrUnavailable, true},
		{"connection refused", sendErr(&net.OpError{Op: "dial", Err: errors.New("connection refused")}), providers.ErrUnavailable, true},
		{"caller canceled", sendErr(context.Canceled), nil, false},
		{"plain error", errors.New("something else"), nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := classify(c.err); got != c.want {
				t.Errorf("aws classify(%v) = %v, want %v", c.err, got, c.want)
			}
			if got := retryable(c.err); got != c.retry {
				t.Errorf("aws retryable(%v) = %v, want %v", c.err, got, c.retry)
			}
			tr := translate(context.Background(), c.err)
			if c.want != nil && !errors.Is(tr, c.want) {
				t.Errorf("aws translate(%v) = %v, not %v", c.err, tr, c.want)
			}
			// The SDK error stays reachable for callers that want the code.
			var ae smithy.APIError
			if errors.As(c.err, &ae) && !errors.As(tr, &ae) {
				t.Errorf("aws translate(%v) lost the API error", c.err)
			}
		})
	}
}

func TestAWSTranslatePrefersCallerContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := translate(ctx, apiErr(503, "RequestLimitExceeded"))
	if !errors.Is(err, context.Canceled) || errors.Is(err, providers.ErrThrottled) {
		t.Fatalf("aws translate after the caller gave up = %v, want context.Canceled only", err)
	}
}

func TestAWSBackoffJitterBounds(t *testing.T) {
	b := jitterBackoff{base: 100 * time.Millisecond, max: 2 * time.Second}
	plain := fmt.Errorf("x: %w", apiErr(500, "InternalError"))
	throttle := apiErr(503, "RequestLimitExceeded")
	cases := []struct {
		attempt int
		err     error
		lo, hi  time.Duration
	}{
		{1, plain, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, plain, 100 * time.Millisecond, 200 * time.Millisecond},
		{3, plain, 200 * time.Millisecond, 400 * time.Millisecond},
		{1, throttle, 100 * time.Millisecond, 200 * time.Millisecond},
		{6, plain, time.Second, 2 * time.Second},
		{60, plain, time.Second, 2 * time.Second},
	}
	for _, c := range cases {
		seen := make(map[time.Duration]bool)
		for range 200 {
			d, err := b.BackoffDelay(c.attempt, c.err)
			if err != nil || d < c.lo || d > c.hi {
				t.Fatalf("aws backoff before retry %d (%v) = %s, %v; want within [%s, %s]", c.attempt, classify(c.err), d, err, c.lo, c.hi)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("aws backoff before retry %d took only %d distinct values in 200 draws: no jitter", c.attempt, len(seen))
		}
	}
}

// TestAWSRetryerPolicy checks the configured SDK retryer itself: attempts
// bounded, the decision taken from classify, no retry quota to run dry.
func TestAWSRetryerPolicy(t *testing.T) {
	tn, err := Settings{MaxAttempts: 4, BackoffBase: "1ms", BackoffMax: "4ms"}.tuning()
	if err != nil {
		t.Fatal(err)
	}
	r := newRetryer(tn)
	if r.MaxAttempts() != 4 {
		t.Fatalf("aws retryer max attempts = %d, want 4", r.MaxAttempts())
	}
	if !r.IsErrorRetryable(apiErr(503, "RequestLimitExceeded")) || r.IsErrorRetryable(apiErr(403, "UnauthorizedOperation")) {
		t.Fatal("aws retryer: want throttling retried and permission errors not")
	}
	// Thousands of retry tokens in a row: a token bucket would refuse.
	for i := range 5000 {
		if _, err := r.GetRetryToken(context.Background(), apiErr(500, "InternalError")); err != nil {
			t.Fatalf("aws retryer refused retry token %d: %v", i, err)
		}
	}
}
