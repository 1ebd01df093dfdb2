package aws

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/handoffvpn/handoff/providers"
)

// classify says which providers sentinel an EC2 SDK error means, or nil when
// it is none of them: a plain client error (InvalidParameterValue...) or
// the caller's own cancellation. It is the single source of truth for both
// the retry decision and the errors callers see.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var canceled interface{ CanceledError() bool }
	if errors.As(err, &canceled) && canceled.CanceledError() || errors.Is(err, context.Canceled) {
		return nil
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if s := classifyCode(ae.ErrorCode()); s != nil {
			return s
		}
	}
	// A request that got no answer (timeout, refused connection) is also
	// wrapped in a ResponseError, with status 0: leave it to the checks
	// below.
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil && re.Response.Response != nil && re.HTTPStatusCode() != 0 {
		switch st := re.HTTPStatusCode(); {
		case st == http.StatusTooManyRequests:
			return providers.ErrThrottled
		case st == http.StatusUnauthorized || st == http.StatusForbidden:
			return providers.ErrPermission
		case st >= 500:
			return providers.ErrUnavailable
		}
		// Any other answer from the server is a client error: not retried.
		return nil
	}
	// No answer at all: the attempt timed out, or the connection failed.
	var ne net.Error
	var send *smithyhttp.RequestSendError
	if errors.As(err, &ne) || errors.As(err, &send) || errors.Is(err, context.DeadlineExceeded) {
		return providers.ErrUnavailable
	}
	return nil
}

// classifyCode maps EC2 error codes (see the EC2 API reference, "Error
// codes") to sentinels.
func classifyCode(code string) error {
	switch code {
	case "RequestLimitExceeded", "Throttling", "ThrottlingException", "EC2ThrottledException",
		"RequestThrottled", "TooManyRequestsException", "BandwidthLimitExceeded":
		return providers.ErrThrottled
	case "UnauthorizedOperation", "AuthFailure", "AccessDenied", "AccessDeniedException",
		"Blocked", "OptInRequired", "UnrecognizedClientException", "InvalidClientTokenId",
		"SignatureDoesNotMatch", "ExpiredToken", "RequestExpired":
		return providers.ErrPermission
	case "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
		"RequestTimeoutException":
		return providers.ErrUnavailable
	case "IncorrectState", "ConcurrentTagAccess", "Resource.AlreadyAssociated", "PrivateIpAddressInUse",
		"IncorrectInstanceState":
		return providers.ErrConflict
	case "InvalidID":
		return providers.ErrNotFound
	}
	if strings.HasSuffix(code, ".NotFound") {
		return providers.ErrNotFound
	}
	return nil
}

// retryable is the retry policy: throttling, 5xx and timeouts are retried;
// permission errors, other 4xx and the caller's cancellation never are.
func retryable(err error) bool {
	s := classify(err)
	return s == providers.ErrThrottled || s == providers.ErrUnavailable
}

// translate wraps an SDK error with its sentinel so callers can use both
// errors.Is(err, providers.ErrX) and errors.As(err, &smithy.APIError).
// When the caller's context has ended, that is the error that matters.
func translate(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w (last error: %w)", ctxErr, err)
	}
	if s := classify(err); s != nil {
		return fmt.Errorf("%w: %w", s, err)
	}
	return err
}

// newRetryer configures the SDK's standard retryer with Handoff's policy.
//
// The SDK's default retryer draws every retry from a client-wide token
// bucket (500 tokens, 5 per throttled retry, 14 per other retry) and fails
// a call at once with "retry quota exceeded" when it runs dry. A failover
// claim is a burst of up to a few hundred parallel calls that must all
// land, exactly when the API is most likely to push back, so a shared
// bucket would turn one throttled burst into failed moves. Retries are
// bounded instead by max_attempts per call and max_parallel calls in
// flight, with jittered backoff spreading them out.
func newRetryer(t tuning) sdkaws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = t.maxAttempts
		o.MaxBackoff = t.backoffMax
		o.Backoff = jitterBackoff{base: t.backoffBase, max: t.backoffMax}
		o.Retryables = []retry.IsErrorRetryable{retry.IsErrorRetryableFunc(func(err error) sdkaws.Ternary {
			return sdkaws.BoolTernary(retryable(err))
		})}
		o.RateLimiter = ratelimit.None
	})
}

// jitterBackoff is exponential backoff with "equal jitter": the delay
// before retry n is uniform in [d/2, d] with d = base·2^(n-1), capped at
// max. Throttling starts one step higher, since the API asked us to slow
// down. Half the window stays fixed so parallel callers never retry at
// once with zero delay.
type jitterBackoff struct {
	base, max time.Duration
}

func (b jitterBackoff) BackoffDelay(attempt int, err error) (time.Duration, error) {
	step := attempt - 1
	if errors.Is(classify(err), providers.ErrThrottled) {
		step++
	}
	d := b.max
	if step < 30 {
		if e := b.base << step; e > 0 && e < b.max {
			d = e
		}
	}
	half := d / 2
	return half + rand.N(d-half+1), nil
}
