package gcp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/apiv1/computepb"
	"github.com/google/uuid"
	gax "github.com/googleapis/gax-go/v2"
	"google.golang.org/api/googleapi"

	"github.com/handoffvpn/handoff/providers"
)

// noSDKRetry turns off the SDK's own retries (it retries some reads on
// 503/504 for up to minutes): the provider owns the whole policy, so one
// bound holds for every call.
var noSDKRetry = gax.WithRetry(func() gax.Retryer { return nil })

// apiError is a GCE answer translated into a providers sentinel, keeping
// what the API said for the operator.
type apiError struct {
	kind   error // a providers sentinel, or nil when none applies
	status int
	reason string
	msg    string
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("HTTP %d", e.status)
	if e.reason != "" {
		s += " " + e.reason
	}
	if e.msg != "" {
		s += ": " + e.msg
	}
	if e.kind != nil {
		s = e.kind.Error() + " (" + s + ")"
	}
	return s
}

func (e *apiError) Unwrap() error { return e.kind }

// classify maps an HTTP status and GCE reason to a sentinel.
func classify(status int, reason string) error {
	switch strings.ToLower(reason) {
	case "ratelimitexceeded", "userratelimitexceeded", "rate_limit_exceeded":
		return providers.ErrThrottled
	case "conditionnotmet", "condition_not_met", "ip_in_use_by_another_resource", "resourceinuse", "resource_in_use_by_another_resource":
		return providers.ErrConflict
	}
	switch {
	case status == 429:
		return providers.ErrThrottled
	case status == 401 || status == 403:
		return providers.ErrPermission
	case status == 404:
		return providers.ErrNotFound
	case status == 409 || status == 412:
		return providers.ErrConflict
	case status >= 500:
		return providers.ErrUnavailable
	}
	return nil
}

// translate turns what the SDK returned into an error matching the
// providers sentinels. parent is the caller's context: a deadline of the
// per-call timeout is a retryable timeout, the caller's own end is not.
func translate(parent context.Context, err error) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		reason := ""
		if len(ge.Errors) > 0 {
			reason = ge.Errors[0].Reason
		}
		return &apiError{kind: classify(ge.Code, reason), status: ge.Code, reason: reason, msg: ge.Message}
	}
	if parent.Err() != nil {
		return fmt.Errorf("gave up: %w", parent.Err())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: call timed out (%v)", providers.ErrUnavailable, err)
	}
	var ne net.Error
	var ue *url.Error
	if errors.As(err, &ne) || errors.As(err, &ue) {
		return fmt.Errorf("%w: %v", providers.ErrUnavailable, err)
	}
	return err
}

// opError reports the failure a DONE Operation carries, if any.
func opError(op *computepb.Operation) error {
	if op.GetError() == nil && (op.HttpErrorStatusCode == nil || op.GetHttpErrorStatusCode() < 300) {
		return nil
	}
	code, msg := "", op.GetHttpErrorMessage()
	if errs := op.GetError().GetErrors(); len(errs) > 0 {
		code, msg = errs[0].GetCode(), errs[0].GetMessage()
	}
	status := int(op.GetHttpErrorStatusCode())
	return &apiError{kind: classify(status, code), status: status, reason: code, msg: fmt.Sprintf("operation %s: %s", op.GetName(), msg)}
}

func retryable(err error) bool {
	return errors.Is(err, providers.ErrThrottled) || errors.Is(err, providers.ErrUnavailable)
}

// call runs one API request under the per-call timeout and translates its
// error.
func (p *Provider) call(ctx context.Context, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, p.cfg.callTimeout)
	defer cancel()
	return translate(ctx, fn(cctx))
}

// retry runs unit until it succeeds, fails with an error that is not
// worth retrying, or has used every attempt. Delays double from the base
// with jitter, so a fleet that all got throttled does not come back in step.
func (p *Provider) retry(ctx context.Context, what string, unit func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := unit(ctx)
		if err == nil {
			return nil
		}
		if !retryable(err) || attempt >= p.cfg.Attempts || ctx.Err() != nil {
			if attempt > 1 {
				return fmt.Errorf("%s (after %d attempts): %w", what, attempt, err)
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		d := p.backoff(attempt)
		p.log.Debug("gcp call failed, retrying", "call", what, "attempt", attempt, "in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: gave up after %d attempts: %w (last error: %v)", what, attempt, ctx.Err(), err)
		case <-t.C:
		}
	}
}

func (p *Provider) backoff(attempt int) time.Duration {
	d := p.cfg.backoffBase << (attempt - 1)
	if d > p.cfg.backoffMax || d <= 0 {
		d = p.cfg.backoffMax
	}
	return d/2 + rand.N(d/2+1)
}

// read runs a retried read.
func (p *Provider) read(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	return p.retry(ctx, what, func(ctx context.Context) error { return p.call(ctx, fn) })
}

// opProto unwraps the SDK's Operation handle.
func opProto(op *compute.Operation, err error) (*computepb.Operation, error) {
	if err != nil {
		return nil, err
	}
	return op.Proto(), nil
}

// scope says which operations collection an Operation lives in.
type scope struct{ zone, region string }

// mutate sends one mutation and waits for its Operation. One requestId
// covers every retry of it, so a request that reached GCE but whose answer
// was lost is not applied twice: the retry gets the same Operation back.
func (p *Provider) mutate(ctx context.Context, what string, sc scope, send func(ctx context.Context, requestID string) (*computepb.Operation, error)) error {
	reqID := uuid.NewString()
	return p.retry(ctx, what, func(ctx context.Context) error {
		var op *computepb.Operation
		err := p.call(ctx, func(ctx context.Context) error {
			var err error
			op, err = send(ctx, reqID)
			return err
		})
		if err != nil {
			return err
		}
		return p.wait(ctx, sc, op)
	})
}

// wait blocks until op is DONE with the operations' server-side wait
// method (GCE returns as soon as the operation ends). The SDK's
// Operation.Wait polls with a one-second first pause, which alone would
// exceed the failover budget.
func (p *Provider) wait(ctx context.Context, sc scope, op *computepb.Operation) error {
	wctx, cancel := context.WithTimeout(ctx, p.cfg.opTimeout)
	defer cancel()
	for op.GetStatus() != computepb.Operation_DONE {
		var next *computepb.Operation
		err := translate(wctx, func() error {
			var err error
			switch {
			case sc.zone != "":
				next, err = p.zoneOps.Wait(wctx, &computepb.WaitZoneOperationRequest{Project: p.project, Zone: sc.zone, Operation: op.GetName()}, noSDKRetry)
			case sc.region != "":
				next, err = p.regionOps.Wait(wctx, &computepb.WaitRegionOperationRequest{Project: p.project, Region: sc.region, Operation: op.GetName()}, noSDKRetry)
			default:
				next, err = p.globalOps.Wait(wctx, &computepb.WaitGlobalOperationRequest{Project: p.project, Operation: op.GetName()}, noSDKRetry)
			}
			return err
		}())
		if err != nil {
			if ctx.Err() == nil && wctx.Err() != nil {
				return fmt.Errorf("%w: operation %s not done after %v", providers.ErrUnavailable, op.GetName(), p.cfg.opTimeout)
			}
			return fmt.Errorf("waiting for operation %s: %w", op.GetName(), err)
		}
		op = next
	}
	return opError(op)
}
