package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/agent"
)

// Client errors, matched with errors.Is.
var (
	// ErrUnreachable: no answer from the agent at all.
	ErrUnreachable = errors.New("agent unreachable")
	// ErrUnauthorized: the agent refused the request's token (or its
	// absence).
	ErrUnauthorized = errors.New("not authorized")
)

// Error is an error answer of the API.
type Error struct {
	Status int
	ErrorBody
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("agent answered %d %s: %s", e.Status, http.StatusText(e.Status), e.ErrorBody.Error)
	if e.Leader != "" {
		msg += fmt.Sprintf(" (leader %s", e.Leader)
		if e.LeaderAPI != "" {
			msg += " at " + e.LeaderAPI
		}
		msg += ")"
	}
	return msg
}

// Unwrap lets errors.Is(err, ErrUnauthorized) match 401 and 403.
func (e *Error) Unwrap() error {
	if e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden {
		return ErrUnauthorized
	}
	return nil
}

// ClientOptions tune a Client.
type ClientOptions struct {
	// CAFile verifies an HTTPS agent's certificate.
	CAFile string
	// Timeout bounds each request (default 70s: promote waits for the
	// leadership transfer).
	Timeout time.Duration
}

// Client talks to one agent's API.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// NewClient returns a client for the agent at addr ("host:port", or a URL
// with http or https).
func NewClient(addr, token string, o ClientOptions) (*Client, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("agent address %q: want host:port or an http(s) URL", addr)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the agent is local or on a management network, not behind the user's web proxy
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", o.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if o.Timeout <= 0 {
		o.Timeout = 70 * time.Second
	}
	return &Client{base: u, token: token, hc: &http.Client{Transport: tr, Timeout: o.Timeout}}, nil
}

// Addr is the agent's base URL.
func (c *Client) Addr() string { return c.base.String() }

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	return c.doAt(ctx, c.base, method, path, body, contentType)
}

func (c *Client) doAt(ctx context.Context, base *url.URL, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	u := *base
	p, q, _ := strings.Cut(path, "?")
	u.Path += p
	u.RawQuery = q
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("building request %s %s: %w", method, path, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%w at %s: %w", ErrUnreachable, base.String(), err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		e := &Error{Status: resp.StatusCode}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(raw, &e.ErrorBody) != nil || e.ErrorBody.Error == "" {
			e.ErrorBody.Error = strings.TrimSpace(string(raw))
		}
		return nil, e
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, path string, out any) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding the answer to GET %s: %w", path, err)
	}
	return nil
}

func (c *Client) postJSON(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, http.MethodPost, path, bytes.NewReader(b), "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding the answer to POST %s: %w", path, err)
	}
	return nil
}

// Status returns the agent's view of the cluster.
func (c *Client) Status(ctx context.Context) (agent.Status, error) {
	var st agent.Status
	return st, c.getJSON(ctx, "/v1/status", &st)
}

// Members returns the members with their health.
func (c *Client) Members(ctx context.Context) ([]agent.MemberStatus, error) {
	var m []agent.MemberStatus
	return m, c.getJSON(ctx, "/v1/members", &m)
}

// History returns the failover history, oldest first.
func (c *Client) History(ctx context.Context) ([]agent.HistoryEntry, error) {
	var h []agent.HistoryEntry
	return h, c.getJSON(ctx, "/v1/history", &h)
}

// SAs lists the replicated SAs that q matches (no keys), and how many
// matched before q's limit.
func (c *Client) SAs(ctx context.Context, q SAQuery) ([]agent.SAInfo, int, error) {
	v := url.Values{}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Peer != "" {
		v.Set("peer", q.Peer)
	}
	if q.IKE != "" {
		v.Set("ike", q.IKE)
	}
	path := "/v1/sas"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil, "")
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var s []agent.SAInfo
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, 0, fmt.Errorf("decoding the answer to GET %s: %w", path, err)
	}
	total, err := strconv.Atoi(resp.Header.Get(HeaderTotal))
	if err != nil {
		total = len(s) // an agent from before the header
	}
	return s, total, nil
}

// Peers returns the Raft configuration.
func (c *Client) Peers(ctx context.Context) ([]agent.Peer, error) {
	var p []agent.Peer
	return p, c.getJSON(ctx, "/v1/raft/peers", &p)
}

// Promote makes node the active gateway.
func (c *Client) Promote(ctx context.Context, node string) (agent.Handover, error) {
	var h agent.Handover
	return h, c.postJSON(ctx, "/v1/promote", NodeRequest{Node: node}, &h)
}

// Drain hands the active role to the best other gateway.
func (c *Client) Drain(ctx context.Context) (agent.Handover, error) {
	var h agent.Handover
	return h, c.postJSON(ctx, "/v1/drain", struct{}{}, &h)
}

// RemovePeer removes node from the Raft configuration.
func (c *Client) RemovePeer(ctx context.Context, node string) error {
	return c.postJSON(ctx, "/v1/raft/remove-peer", NodeRequest{Node: node}, nil)
}

// TransferLeadership hands Raft leadership to node ("" for any).
func (c *Client) TransferLeadership(ctx context.Context, node string) (agent.Handover, error) {
	var h agent.Handover
	return h, c.postJSON(ctx, "/v1/raft/transfer-leadership", NodeRequest{Node: node}, &h)
}

// SaveSnapshot streams the leader's snapshot into w and checks its digest.
// A follower's 421 with the leader's API address is followed once.
func (c *Client) SaveSnapshot(ctx context.Context, w io.Writer) (agent.SnapshotInfo, error) {
	resp, err := c.followLeader(ctx, http.MethodGet, "/v1/snapshot", nil)
	if err != nil {
		return agent.SnapshotInfo{}, err
	}
	defer resp.Body.Close()
	want := resp.Header.Get(HeaderSnapshotSHA256)
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), resp.Body)
	if err != nil {
		return agent.SnapshotInfo{}, fmt.Errorf("receiving snapshot: %w", err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if want != "" && got != want {
		return agent.SnapshotInfo{}, fmt.Errorf("snapshot digest mismatch: got %s, the agent sent %s", got, want)
	}
	info := agent.SnapshotInfo{Size: n, SHA256: got}
	_, _ = fmt.Sscan(resp.Header.Get(HeaderSnapshotIndex), &info.Index)
	return info, nil
}

// RestoreSnapshot sends a saved snapshot to the leader.
func (c *Client) RestoreSnapshot(ctx context.Context, data []byte) (agent.SnapshotInfo, error) {
	var info agent.SnapshotInfo
	resp, err := c.followLeader(ctx, http.MethodPost, "/v1/snapshot", data)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return info, fmt.Errorf("decoding the answer to the restore: %w", err)
	}
	return info, nil
}

func (c *Client) followLeader(ctx context.Context, method, path string, data []byte) (*http.Response, error) {
	body := func() io.Reader {
		if data == nil {
			return nil
		}
		return bytes.NewReader(data)
	}
	resp, err := c.do(ctx, method, path, body(), "application/octet-stream")
	var ae *Error
	if errors.As(err, &ae) && ae.Status == http.StatusMisdirectedRequest && ae.LeaderAPI != "" {
		u, perr := url.Parse(ae.LeaderAPI)
		if perr != nil || u.Host == "" {
			return nil, err
		}
		u.Path = strings.TrimRight(u.Path, "/")
		return c.doAt(ctx, u, method, path, body(), "application/octet-stream")
	}
	return resp, err
}
