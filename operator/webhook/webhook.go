// Package webhook delivers Handoff's operator events (failover started,
// completed, failed; node unhealthy, recovered; replication lag) as signed
// JSON POSTs. Events wait in a bounded queue (a full queue drops and counts
// them: alerting never blocks failover); each is retried with jittered
// exponential backoff on network errors, 5xx and 429, and counted as a dead
// letter when it runs out of attempts or the receiver refuses it (4xx).
//
// Signature: X-Handoff-Timestamp carries the Unix time in seconds and
// X-Handoff-Signature is "v1=" + hex(HMAC-SHA256(secret, timestamp + "." +
// body)). Receivers check it with Verify, which also bounds the timestamp's
// age so a captured delivery cannot be replayed later.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Headers of a delivery.
const (
	HeaderTimestamp = "X-Handoff-Timestamp"
	HeaderSignature = "X-Handoff-Signature"
	HeaderEvent     = "X-Handoff-Event"
	HeaderDelivery  = "X-Handoff-Delivery"
)

// Event is one webhook payload.
type Event struct {
	// ID is unique per event; retries of one event carry the same ID, so
	// receivers can deduplicate.
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// Node is the node the event is about (for failover events: the node
	// taking over).
	Node string    `json:"node"`
	Term uint64    `json:"term,omitempty"`
	At   time.Time `json:"at"`
	// Source is the node that sent the event.
	Source string `json:"source"`
	// Reason is why the active role moved or the node fenced (first_election,
	// leader_silent, lease_lost, unhealthy, promote, drain, transfer,
	// restore, takeover_failed, unknown); Detail has the particulars.
	Reason string `json:"reason,omitempty"`
	// TimingsMs are the takeover's per-phase timings in milliseconds.
	TimingsMs *Timings `json:"timings_ms,omitempty"`
	SAs       int      `json:"sas,omitempty"`
	Detail    string   `json:"detail,omitempty"`
	Error     string   `json:"error,omitempty"`
	// Held, Counts and Reasons are a KindFlapping summary's: how many
	// events were held back, by kind and by reason.
	Held    int            `json:"held,omitempty"`
	Counts  map[string]int `json:"counts,omitempty"`
	Reasons map[string]int `json:"reasons,omitempty"`
	// Text is a one-line summary: Slack's and Mattermost's incoming
	// webhooks display it as the message.
	Text string `json:"text"`
}

// Timings are a takeover's phase timings in milliseconds, in the order the
// phases run.
type Timings struct {
	Detect  float64 `json:"detect"`
	Elect   float64 `json:"elect"`
	Claim   float64 `json:"claim"`
	Install float64 `json:"install"`
	Move    float64 `json:"move"`
	Total   float64 `json:"total"`
}

// Config configures a Notifier.
type Config struct {
	URL string
	// Secret signs every delivery. Required: an unsigned alert cannot be
	// told from a forged one.
	Secret []byte
	// Kinds, if not empty, restricts which event kinds are sent.
	Kinds []string
	// QueueSize bounds the events waiting for delivery (default 256).
	QueueSize int
	// MaxAttempts per event (default 6).
	MaxAttempts int
	// Limit is how many events one Window may send; the rest are held
	// back and summarised in one KindFlapping event (see coalescer).
	// Defaults DefaultLimit and DefaultWindow; a negative Limit sends
	// everything.
	Limit  int
	Window time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential backoff
	// (defaults 200ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// Timeout of one attempt (default 10s).
	Timeout time.Duration
	Client  *http.Client
	Logger  *slog.Logger
}

// Notifier delivers events in the background. Notify never blocks.
type Notifier struct {
	cfg   Config
	log   *slog.Logger
	queue chan Event

	delivered, retried, dead, dropped, held atomic.Uint64

	mu sync.Mutex // guards co
	co *coalescer // nil: every event goes out

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("invalid webhook configuration")

// Validate checks what New needs, without starting anything (the agent's
// preflight, and so handoff validate, runs it).
func (cfg Config) Validate() error {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: url %q is not an http(s) URL", ErrConfig, redactURL(cfg.URL))
	}
	if len(cfg.Secret) < 16 {
		return fmt.Errorf("%w: secret of %d bytes; need at least 16", ErrConfig, len(cfg.Secret))
	}
	return nil
}

// New validates cfg and starts the delivery goroutine; Close stops it.
func New(cfg Config) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 256
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 6
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Limit == 0 {
		cfg.Limit = DefaultLimit
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{cfg: cfg, log: cfg.Logger.With("component", "webhook", "url", redactURL(cfg.URL)),
		queue: make(chan Event, cfg.QueueSize), cancel: cancel, done: make(chan struct{})}
	if cfg.Limit > 0 {
		n.co = newCoalescer(cfg.Limit, cfg.Window)
	}
	go n.run(ctx)
	return n, nil
}

// redactURL keeps credentials and query strings (Slack-style URLs carry
// their secret in the path, so only scheme and host are kept) out of logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "<unparsable>"
	}
	return u.Scheme + "://" + u.Host + "/…"
}

// Notify queues e, or holds it back when its window has sent Limit events
// already (see coalescer). It fills in ID, At and Text when empty. A full
// queue drops the event and counts it; a filtered kind is ignored.
func (n *Notifier) Notify(e Event) {
	if len(n.cfg.Kinds) > 0 && !slices.Contains(n.cfg.Kinds, e.Kind) {
		return
	}
	if e.At.IsZero() {
		e.At = time.Now().UTC()
	}
	send, summary := true, (*Event)(nil)
	if n.co != nil {
		n.mu.Lock()
		send, summary = n.co.admit(time.Now(), e)
		n.mu.Unlock()
	}
	if summary != nil {
		n.enqueue(*summary)
	}
	if !send {
		n.held.Add(1)
		return
	}
	n.enqueue(e)
}

// flush sends the summary of a window that has ended, if one is due: a
// cluster that stops flapping must not keep its last summary until the
// next event.
func (n *Notifier) flush(now time.Time) {
	if n.co == nil {
		return
	}
	n.mu.Lock()
	summary := n.co.tick(now)
	n.mu.Unlock()
	if summary != nil {
		n.enqueue(*summary)
	}
}

func (n *Notifier) enqueue(e Event) {
	if e.ID == "" {
		e.ID = newID()
	}
	if e.Text == "" {
		e.Text = Summary(e)
	}
	if e.Kind == KindFlapping {
		n.log.Warn("the cluster is flapping: webhook events held back", "held", e.Held, "detail", e.Detail)
	}
	select {
	case n.queue <- e:
	default:
		n.dropped.Add(1)
		n.log.Warn("webhook queue full; event dropped", "kind", e.Kind, "id", e.ID)
	}
}

// Counts reports delivered events, retried attempts, dead letters and
// events dropped on a full queue.
func (n *Notifier) Counts() (delivered, retried, deadLetters, dropped uint64) {
	return n.delivered.Load(), n.retried.Load(), n.dead.Load(), n.dropped.Load()
}

// Held reports events held back by coalescing (and summarised instead).
func (n *Notifier) Held() uint64 { return n.held.Load() }

// Close stops delivering: an attempt in flight is cancelled and what is
// still queued is counted as dead letters. Safe twice.
func (n *Notifier) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		<-n.done
		for {
			select {
			case <-n.queue:
				n.dead.Add(1)
			default:
				return
			}
		}
	})
	return nil
}

func (n *Notifier) run(ctx context.Context) {
	defer close(n.done)
	// Windows close on this tick when no event arrives to close them.
	tick := time.NewTicker(max(n.cfg.Window/6, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			n.flush(now)
		case e := <-n.queue:
			n.deliver(ctx, e)
		}
	}
}

// errPermanent marks a refusal that retrying cannot fix.
var errPermanent = errors.New("refused by the receiver")

func (n *Notifier) deliver(ctx context.Context, e Event) {
	body, err := json.Marshal(e)
	if err != nil {
		n.dead.Add(1)
		n.log.Error("encoding webhook event", "kind", e.Kind, "err", err)
		return
	}
	for attempt := 1; ; attempt++ {
		err := n.post(ctx, e, body)
		if err == nil {
			n.delivered.Add(1)
			return
		}
		if ctx.Err() != nil {
			n.dead.Add(1)
			return
		}
		if errors.Is(err, errPermanent) || attempt >= n.cfg.MaxAttempts {
			n.dead.Add(1)
			n.log.Error("webhook event undeliverable", "kind", e.Kind, "id", e.ID, "attempts", attempt, "err", err)
			return
		}
		wait := Backoff(attempt, n.cfg.MinBackoff, n.cfg.MaxBackoff)
		n.log.Warn("webhook delivery failed; retrying", "kind", e.Kind, "id", e.ID, "attempt", attempt, "in", wait, "err", err)
		n.retried.Add(1)
		select {
		case <-ctx.Done():
			n.dead.Add(1)
			return
		case <-time.After(wait):
		}
	}
}

func (n *Notifier) post(ctx context.Context, e Event, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building request: %w: %w", err, errPermanent)
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "handoff-webhook/1")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(n.cfg.Secret, ts, body))
	req.Header.Set(HeaderEvent, e.Kind)
	req.Header.Set(HeaderDelivery, e.ID)
	resp, err := n.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("posting %s: %w", e.Kind, stripURL(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
		return fmt.Errorf("posting %s: receiver answered %s", e.Kind, resp.Status)
	}
	return fmt.Errorf("posting %s: receiver answered %s: %w", e.Kind, resp.Status, errPermanent)
}

// stripURL drops the URL from a *url.Error: it may hold a secret path.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// Backoff is the wait before retry number attempt (1-based): a uniformly
// random duration in [min, min(max, min·2^(attempt-1))] ("full jitter"), so
// many nodes retrying after one receiver outage do not arrive together.
func Backoff(attempt int, minWait, maxWait time.Duration) time.Duration {
	ceil := minWait
	for i := 1; i < attempt && ceil < maxWait; i++ {
		ceil *= 2
	}
	ceil = min(ceil, maxWait)
	span := int64(ceil - minWait)
	if span <= 0 {
		return minWait
	}
	r, err := rand.Int(rand.Reader, big.NewInt(span+1))
	if err != nil {
		return ceil
	}
	return minWait + time.Duration(r.Int64())
}

// Sign returns the X-Handoff-Signature value of body sent at ts.
func Sign(secret []byte, ts string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Verification errors.
var (
	ErrBadSignature = errors.New("webhook signature does not match")
	ErrStale        = errors.New("webhook timestamp outside the tolerance")
)

// Verify checks a delivery's signature header against body and refuses a
// timestamp further than tolerance from now. sigHeader may carry several
// comma-separated signatures (during a secret rotation); one match is
// enough.
func Verify(secret []byte, tsHeader, sigHeader string, body []byte, tolerance time.Duration, now time.Time) error {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: timestamp %q is not Unix seconds", ErrBadSignature, tsHeader)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s off (tolerance %s)", ErrStale, d.Round(time.Second), tolerance)
	}
	want := Sign(secret, tsHeader, body)
	for _, s := range strings.Split(sigHeader, ",") {
		if hmac.Equal([]byte(strings.TrimSpace(s)), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Summary is the one-line text of an event.
func Summary(e Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "handoff: ")
	why := ""
	if e.Reason != "" {
		why = ", " + strings.ReplaceAll(e.Reason, "_", " ")
	}
	switch e.Kind {
	case "failover.started":
		fmt.Fprintf(&b, "%s is taking over the active role (term %d%s)", e.Node, e.Term, why)
	case "failover.completed":
		fmt.Fprintf(&b, "%s is active (term %d, %d SAs%s)", e.Node, e.Term, e.SAs, why)
		if t := e.TimingsMs; t != nil {
			fmt.Fprintf(&b, " after %.0f ms: detect %.0f elect %.0f claim %.0f install %.0f move %.0f ms",
				t.Total, t.Detect, t.Elect, t.Claim, t.Install, t.Move)
		}
	case "failover.failed":
		fmt.Fprintf(&b, "takeover by %s failed (term %d%s)", e.Node, e.Term, why)
	case "node.fenced":
		fmt.Fprintf(&b, "%s fenced itself", e.Node)
		if e.Reason != "" {
			fmt.Fprintf(&b, " (%s)", why[2:])
		}
	case "leadership.transferred":
		fmt.Fprintf(&b, "%s handed leadership on", e.Node)
		if e.Reason != "" {
			fmt.Fprintf(&b, " (%s)", why[2:])
		}
	case "node.unhealthy":
		fmt.Fprintf(&b, "%s is unhealthy", e.Node)
	case "node.recovered":
		fmt.Fprintf(&b, "%s recovered", e.Node)
	case "replication.lag":
		fmt.Fprintf(&b, "%s is lagging behind the leader", e.Node)
	case "replication.recovered":
		fmt.Fprintf(&b, "%s caught up with the leader", e.Node)
	case KindFlapping:
		fmt.Fprintf(&b, "the cluster is flapping: %d events held back; latest: %s at term %d", e.Held, e.Node, e.Term)
	default:
		fmt.Fprintf(&b, "%s on %s", e.Kind, e.Node)
	}
	if e.Detail != "" {
		fmt.Fprintf(&b, " (%s)", e.Detail)
	}
	if e.Error != "" {
		fmt.Fprintf(&b, ": %s", e.Error)
	}
	return b.String()
}
