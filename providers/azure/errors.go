package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/handoffvpn/handoff/providers"
)

// apiError is a failed Resource Manager call, classified into a providers
// sentinel. It unwraps to the sentinel and to the SDK's error, so callers
// use errors.Is(err, providers.ErrPermission) and, when they need the
// detail, errors.As(err, **azcore.ResponseError).
type apiError struct {
	status int
	code   string
	msg    string
	kind   error // a providers sentinel, or nil for errors that are final
	err    error
}

func (e *apiError) Error() string {
	var b strings.Builder
	if e.status > 0 {
		fmt.Fprintf(&b, "HTTP %d", e.status)
	}
	if e.code != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.code)
	}
	if e.msg != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.msg)
	}
	if b.Len() == 0 {
		return e.err.Error()
	}
	return b.String()
}

func (e *apiError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// operationError marks the failure of a long-running operation that the
// service accepted: the Azure-AsyncOperation status ended "Failed". Unlike a
// failed HTTP call, which the SDK pipeline already retried, it is worth one
// more try from a fresh read when its cause is transient.
type operationError struct{ err error }

func (e *operationError) Error() string { return "long-running operation failed: " + e.err.Error() }
func (e *operationError) Unwrap() error { return e.err }

// translate turns an SDK or transport error into an apiError carrying the
// providers sentinel its cause deserves. Cancellation by the caller is
// returned unchanged: it is not the provider's failure.
func translate(err error) error {
	if err == nil {
		return nil
	}
	var already *apiError
	if errors.As(err, &already) {
		return err
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return &apiError{
			status: re.StatusCode,
			code:   re.ErrorCode,
			msg:    armMessage(re.RawResponse),
			kind:   classify(re.StatusCode, re.ErrorCode),
			err:    re,
		}
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &apiError{msg: "timed out", kind: providers.ErrUnavailable, err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return &apiError{msg: "network error: " + ne.Error(), kind: providers.ErrUnavailable, err: err}
	}
	return err
}

// classify maps an HTTP status and an ARM error code to a sentinel. The code
// wins where it is specific: a failed long-running operation reports it
// with the 200 of its status poll.
func classify(status int, code string) error {
	switch strings.ToLower(code) {
	case "authorizationfailed", "linkedauthorizationfailed", "authenticationfailed",
		"invalidauthenticationtoken", "invalidauthenticationtokenaudience", "expiredauthenticationtoken":
		return providers.ErrPermission
	case "toomanyrequests", "subscriptionrequeststhrottled", "throttled":
		return providers.ErrThrottled
	case "preconditionfailed", "anotheroperationinprogress", "publicipaddressinuse",
		"retryableerror", "conflict":
		return providers.ErrConflict
	case "resourcenotfound", "notfound", "resourcegroupnotfound", "parentresourcenotfound":
		return providers.ErrNotFound
	case "internalservererror", "serverbusy", "serviceunavailable", "gatewaytimeout",
		"internalerror", "operationtimedout":
		return providers.ErrUnavailable
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return providers.ErrPermission
	case status == http.StatusTooManyRequests:
		return providers.ErrThrottled
	case status == http.StatusPreconditionFailed || status == http.StatusConflict:
		return providers.ErrConflict
	case status == http.StatusNotFound:
		return providers.ErrNotFound
	case status == http.StatusRequestTimeout || status >= 500:
		return providers.ErrUnavailable
	}
	return nil
}

// armMessage extracts the message of ARM's error envelope, if any.
func armMessage(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	b, err := runtime.Payload(resp)
	if err != nil || len(b) == 0 {
		return ""
	}
	var env struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &env) != nil {
		return ""
	}
	if env.Error != nil && env.Error.Message != "" {
		return env.Error.Message
	}
	return env.Message
}

// retryable says whether a step that failed with err is worth another pass
// from a fresh read: a lost compare-and-swap or a busy resource (ErrConflict),
// or an accepted operation that failed for a transient reason. Throttling,
// 5xx and timeouts of a single call are not: the SDK pipeline already
// retried those with backoff, and trying again here would multiply the
// attempts.
func retryable(err error) bool {
	if errors.Is(err, providers.ErrConflict) {
		return true
	}
	var oe *operationError
	return errors.As(err, &oe) && (errors.Is(err, providers.ErrUnavailable) || errors.Is(err, providers.ErrThrottled))
}

// backoff is the jittered delay before pass attempt+1: base doubled per
// attempt and capped, then drawn from [d/2, d) so racing nodes fall apart.
func (t tuning) backoff(attempt int) time.Duration {
	d := t.backoffBase
	for i := 1; i < attempt && d < t.backoffMax; i++ {
		d *= 2
	}
	d = min(d, t.backoffMax)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retry runs step until it succeeds, fails for good, or has run
// maxAttempts times; see retryable.
func (p *Provider) retry(ctx context.Context, what string, step func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := step(ctx)
		if err == nil || !retryable(err) || attempt >= p.tune.maxAttempts {
			if err != nil && retryable(err) {
				return fmt.Errorf("%s: gave up after %d attempts: %w", what, attempt, err)
			}
			return err
		}
		d := p.tune.backoff(attempt)
		p.log.Debug("azure: retrying from a fresh read", "what", what, "attempt", attempt, "delay", d, "err", err)
		if err := sleep(ctx, d); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
}

// poll drives a long-running operation to its end at the provider's poll
// interval. The SDK's PollUntilDone is not used: it enforces a one-second
// floor and honours the service's Retry-After (often 10 s on Microsoft.Network),
// both far slower than a failover should wait for a status read.
func poll[T any](ctx context.Context, p *Provider, poller *runtime.Poller[T]) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, p.tune.opTimeout)
	defer cancel()
	for !poller.Done() {
		if err := sleep(ctx, p.tune.pollInterval); err != nil {
			var zero T
			return zero, &apiError{msg: "waiting for a long-running operation", kind: providers.ErrUnavailable, err: err}
		}
		if _, err := poller.Poll(ctx); err != nil {
			var zero T
			return zero, translate(err)
		}
	}
	res, err := poller.Result(ctx)
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) && re.StatusCode < 300 {
			// The status poll succeeded and said the operation failed.
			return res, &operationError{err: translate(err)}
		}
		return res, translate(err)
	}
	return res, nil
}
