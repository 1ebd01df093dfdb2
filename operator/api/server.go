// Package api is the agent's HTTP API and its Go client, which the CLI
// verbs use. The API speaks JSON. Reads are open from loopback, to clients
// that name the agent by a loopback or configured name (Host), so that a
// web page elsewhere cannot read them through DNS rebinding; from anywhere
// else, and for every request that changes state or reads a snapshot, it
// wants `Authorization: Bearer <token>`, compared in constant time against
// the configured tokens (never logged). It listens on 127.0.0.1 unless told
// otherwise, with TLS when given a certificate.
//
// Requests that need the leader are run there: the agent forwards promote,
// drain, remove-peer and transfer-leadership over the cluster's mutual-TLS
// RPC; a snapshot request to a follower gets 421 with the leader's ID and,
// when this server knows it, the leader's API address (the client follows
// it once).
package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/raftstore"
)

// DefaultAddr is where the API listens unless configured otherwise.
const DefaultAddr = "127.0.0.1:7950"

// Backend is what the API needs from the agent (*agent.Agent).
type Backend interface {
	OperatorStatus() agent.Status
	History() []agent.HistoryEntry
	SAs() []agent.SAInfo
	RaftPeers() ([]agent.Peer, error)
	Promote(ctx context.Context, node string) (agent.Handover, error)
	Drain(ctx context.Context) (agent.Handover, error)
	TransferLeadership(ctx context.Context, node string) (agent.Handover, error)
	RemovePeer(ctx context.Context, node string) error
	SaveSnapshot(ctx context.Context, w io.Writer, stale bool) (agent.SnapshotInfo, error)
	RestoreSnapshot(ctx context.Context, r io.Reader) (agent.SnapshotInfo, error)
}

var _ Backend = (*agent.Agent)(nil)

// Config configures a Server.
type Config struct {
	// Addr is the listen address (DefaultAddr when empty).
	Addr string
	// Tokens are the accepted bearer tokens (several during a rotation).
	// With none, every mutating endpoint answers 403.
	Tokens []string
	// TLS, if set, serves HTTPS.
	TLS *tls.Config
	// PeerAPI, if set, returns a node's API URL, for leader hints.
	PeerAPI func(node string) string
	// Hosts are names, besides loopback names and addresses and the host
	// of Addr, by which loopback clients may read without a token (the
	// machine's host name, which may resolve to 127.0.1.1).
	Hosts []string
	// Metrics and Page, if set, are served at /metrics and / (both are
	// reads: open from loopback, token elsewhere; the page's static files
	// are always served, its data comes from /v1).
	Metrics http.Handler
	Page    http.Handler
	// RequestTimeout bounds one request's work (default 60s).
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// Server is the HTTP API of one agent.
type Server struct {
	cfg     Config
	b       Backend
	log     *slog.Logger
	tokens  [][32]byte
	handler http.Handler

	mu        sync.Mutex // guards the following fields
	srv       *http.Server
	ln        net.Listener
	serveErr  chan error
	closeOnce sync.Once
}

// New builds a server; Start listens.
func New(cfg Config, b Backend) (*Server, error) {
	if b == nil {
		return nil, errors.New("api: backend is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, b: b, log: cfg.Logger.With("component", "api")}
	for _, t := range cfg.Tokens {
		if t == "" {
			return nil, errors.New("api: empty token configured")
		}
		s.tokens = append(s.tokens, sha256.Sum256([]byte(t)))
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the API's handler (tests serve it with httptest).
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on the configured address and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("api: listening on %s: %w", s.cfg.Addr, err)
	}
	if host, _, _ := net.SplitHostPort(s.cfg.Addr); !isLoopbackHost(host) && s.cfg.TLS == nil {
		s.log.Warn("API listening beyond loopback without TLS: tokens cross the network in clear", "addr", ln.Addr().String())
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	if s.cfg.TLS != nil {
		srv.TLSConfig = s.cfg.TLS.Clone()
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	s.mu.Lock()
	s.srv, s.ln, s.serveErr = srv, ln, make(chan error, 1)
	s.mu.Unlock()
	go func() { s.serveErr <- srv.Serve(ln) }()
	s.log.Info("API listening", "url", s.URL())
	return nil
}

// URL is the base URL the server listens on (after Start).
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	scheme := "http"
	if s.cfg.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + s.ln.Addr().String()
}

// Close shuts the server down, waiting briefly for requests in flight.
// Safe twice.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		srv, done := s.srv, s.serveErr
		s.mu.Unlock()
		if srv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = srv.Shutdown(ctx)
		if serr := <-done; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
	})
	return err
}

type access int

const (
	read  access = iota // open from loopback, token from elsewhere
	write               // token always
)

type route struct {
	method, path string
	access       access
	h            func(w http.ResponseWriter, r *http.Request) error
}

func (s *Server) routes() http.Handler {
	rs := []route{
		{"GET", "/v1/status", read, s.status},
		{"GET", "/v1/members", read, s.members},
		{"GET", "/v1/history", read, s.history},
		{"GET", "/v1/sas", read, s.sas},
		{"GET", "/v1/raft/peers", read, s.peers},
		{"POST", "/v1/promote", write, s.promote},
		{"POST", "/v1/drain", write, s.drain},
		{"POST", "/v1/raft/remove-peer", write, s.removePeer},
		{"POST", "/v1/raft/transfer-leadership", write, s.transfer},
		{"GET", "/v1/snapshot", write, s.saveSnapshot},
		{"POST", "/v1/snapshot", write, s.restoreSnapshot},
	}
	mux := http.NewServeMux()
	allowed := map[string][]string{}
	for _, rt := range rs {
		mux.Handle(rt.method+" "+rt.path, s.wrap(rt))
		allowed[rt.path] = append(allowed[rt.path], rt.method)
	}
	// Everything else under /v1/ answers in JSON too.
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if methods, ok := allowed[r.URL.Path]; ok {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, strings.Join(methods, " or ")), nil)
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s", r.URL.Path), nil)
	})
	if s.cfg.Metrics != nil {
		mux.Handle("GET /metrics", s.wrap(route{"GET", "/metrics", read, func(w http.ResponseWriter, r *http.Request) error {
			s.cfg.Metrics.ServeHTTP(w, r)
			return nil
		}}))
	}
	if s.cfg.Page != nil {
		mux.Handle("/", s.cfg.Page)
	}
	return mux
}

// apiError is an error with its HTTP answer.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if status, msg := s.authorize(r, rt.access); status != 0 {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="handoff"`)
			}
			writeError(w, status, msg, nil)
			s.log.Warn("API request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", status)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		err := rt.h(w, r.WithContext(ctx))
		status := http.StatusOK
		if err != nil {
			status = s.writeErr(w, err)
		}
		if rt.access == write {
			// The audit line: who asked for what, and how it ended.
			lvl := slog.LevelInfo
			if err != nil {
				lvl = slog.LevelWarn
			}
			s.log.Log(ctx, lvl, "API request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
				"status", status, "took", time.Since(start), "err", err)
		}
	})
}

// authorize returns 0 when the request may go on, or the status and reason.
func (s *Server) authorize(r *http.Request, a access) (int, string) {
	if a == read && isLoopbackRemote(r.RemoteAddr) {
		// A loopback peer is not always a local program asking: a browser
		// on this host runs any site's script, and a site whose name it
		// re-resolves to 127.0.0.1 (DNS rebinding) reaches this port as
		// that name. Only the names this agent answers to open reads; a
		// token opens them under any name.
		if s.knownHost(r.Host) {
			return 0, ""
		}
		if r.Header.Get("Authorization") == "" {
			return http.StatusMisdirectedRequest, fmt.Sprintf("Host %q is not a name of this agent: reads without a token are served to "+
				"loopback clients that ask by a loopback name (localhost, 127.0.0.1, [::1]) or a configured one, not to pages "+
				"of other sites that rebound their name to this host", r.Host)
		}
	}
	if len(s.tokens) == 0 {
		if a == read {
			return http.StatusForbidden, "reads from beyond loopback need a token, and no API token is configured on this agent"
		}
		return http.StatusForbidden, "no API token is configured on this agent: endpoints that change state are disabled"
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return http.StatusUnauthorized, "missing token: send Authorization: Bearer <token>"
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return http.StatusUnauthorized, "malformed Authorization header: want Bearer <token>"
	}
	if !s.tokenOK(strings.TrimSpace(tok)) {
		return http.StatusForbidden, "token not accepted"
	}
	return 0, ""
}

// tokenOK compares the token with every configured one in constant time:
// hashing first makes the comparison independent of the tokens' lengths,
// and no early exit tells which one matched.
func (s *Server) tokenOK(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	ok := 0
	for _, t := range s.tokens {
		ok |= subtle.ConstantTimeCompare(sum[:], t[:])
	}
	return ok == 1
}

// knownHost reports whether a Host header names this agent: empty (an
// HTTP/1.0 client names nothing; a browser always does), a loopback
// address, localhost or a name under .localhost (RFC 6761: never resolved
// elsewhere), the host of the listen address (not 0.0.0.0 or ::), or a
// configured name.
func (s *Server) knownHost(hostport string) bool {
	if hostport == "" {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if isLoopbackHost(host) || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if h, _, err := net.SplitHostPort(s.cfg.Addr); err == nil && h != "" && strings.EqualFold(strings.Trim(h, "[]"), host) {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			return true
		}
	}
	for _, h := range s.cfg.Hosts {
		if strings.EqualFold(strings.TrimSuffix(h, "."), host) {
			return true
		}
	}
	return false
}

func isLoopbackRemote(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ErrorBody is the JSON of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
	// Code classifies the error for scripts (unknown-node, not-eligible,
	// already-active, no-target, busy, is-leader, not-leader, no-leader,
	// bad-snapshot).
	Code string `json:"code,omitempty"`
	// Leader, LeaderAddr and LeaderAPI say where to go instead, on 421.
	Leader     string `json:"leader,omitempty"`
	LeaderAddr string `json:"leader_addr,omitempty"`
	LeaderAPI  string `json:"leader_api,omitempty"`
}

func writeError(w http.ResponseWriter, status int, msg string, body *ErrorBody) {
	if body == nil {
		body = &ErrorBody{}
	}
	body.Error = msg
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // the page sets text, never HTML: keep messages readable
	_ = enc.Encode(v)
}

// writeErr maps an error to its status and writes it.
func (s *Server) writeErr(w http.ResponseWriter, err error) int {
	body := &ErrorBody{}
	status := http.StatusInternalServerError
	var ae *apiError
	var nl *agent.NotLeaderError
	switch {
	case errors.As(err, &ae):
		status = ae.status
	case errors.As(err, &nl):
		status = http.StatusMisdirectedRequest
		body.Code, body.Leader, body.LeaderAddr = "not-leader", nl.Leader, nl.Address
		if s.cfg.PeerAPI != nil && nl.Leader != "" {
			body.LeaderAPI = s.cfg.PeerAPI(nl.Leader)
		}
	case errors.Is(err, agent.ErrUnknownNode):
		status, body.Code = http.StatusBadRequest, "unknown-node"
	case errors.Is(err, raftstore.ErrSnapshot), errors.Is(err, raftstore.ErrSnapshotRefused):
		status, body.Code = http.StatusBadRequest, "bad-snapshot"
	case errors.Is(err, agent.ErrNotEligible):
		status, body.Code = http.StatusConflict, "not-eligible"
	case errors.Is(err, agent.ErrAlreadyActive):
		status, body.Code = http.StatusConflict, "already-active"
	case errors.Is(err, agent.ErrNoTarget):
		status, body.Code = http.StatusConflict, "no-target"
	case errors.Is(err, agent.ErrBusy):
		status, body.Code = http.StatusConflict, "busy"
	case errors.Is(err, agent.ErrIsLeader):
		status, body.Code = http.StatusConflict, "is-leader"
	case errors.Is(err, agent.ErrNoLeader):
		status, body.Code = http.StatusServiceUnavailable, "no-leader"
	case errors.Is(err, raftstore.ErrNotLeader):
		status, body.Code = http.StatusServiceUnavailable, "not-leader"
	case errors.Is(err, context.DeadlineExceeded):
		status = http.StatusGatewayTimeout
	}
	writeError(w, status, err.Error(), body)
	return status
}

// decode reads a small JSON body strictly: unknown fields (a known one
// spelled in another case too), a field given twice and trailing data are
// errors that name what was wrong.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err != nil {
		return badRequest("reading request body: %v", err)
	}
	if len(body) > 64<<10 {
		return badRequest("request body larger than 64 KiB")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if err := exactFields(body, v); err != nil {
		return badRequest("decoding request body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("decoding request body: %v", err)
	}
	if dec.More() {
		return badRequest("decoding request body: trailing data after the JSON object")
	}
	return nil
}

// exactFields checks that body, if a JSON object, names only fields of the
// struct v points to, each spelled exactly as its json tag and given once.
// encoding/json matches names without regard to case ({"Node": ...} fills
// node, so DisallowUnknownFields lets it through) and keeps the last of
// two, so neither is left to it. What is not an object is left to the
// decoder, which refuses it with a type error.
func exactFields(body []byte, v any) error {
	names := jsonNames(reflect.TypeOf(v))
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if !names[key] {
			for n := range names {
				if strings.EqualFold(n, key) {
					return fmt.Errorf("unknown field %q (names are exact: %q)", key, n)
				}
			}
			return fmt.Errorf("unknown field %q", key)
		}
		if seen[key] {
			return fmt.Errorf("field %q given twice", key)
		}
		seen[key] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return err
		}
	}
	return nil
}

// jsonNames returns the JSON names of a struct type's fields (through a
// pointer, with embedded structs' fields promoted as encoding/json does).
func jsonNames(t reflect.Type) map[string]bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	names := make(map[string]bool)
	if t.Kind() != reflect.Struct {
		return names
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case name == "-":
		case f.Anonymous && name == "" && ft.Kind() == reflect.Struct:
			for n := range jsonNames(ft) {
				names[n] = true
			}
		case !f.IsExported():
		case name == "":
			names[f.Name] = true
		default:
			names[name] = true
		}
	}
	return names
}

// NodeRequest is the body of promote, remove-peer and transfer-leadership.
type NodeRequest struct {
	Node string `json:"node"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.b.OperatorStatus())
	return nil
}

func (s *Server) members(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.b.OperatorStatus().Members)
	return nil
}

func (s *Server) history(w http.ResponseWriter, r *http.Request) error {
	h := s.b.History()
	if h == nil {
		h = []agent.HistoryEntry{}
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

// HeaderTotal is how many SAs matched a /v1/sas query before its limit.
const HeaderTotal = "X-Total-Count"

// SAQuery narrows /v1/sas: Peer matches an SA's remote address (with or
// without its port) or remote identity, IKE its IKE_SA or CHILD_SA name,
// and Limit (0: none) caps the answer.
type SAQuery struct {
	Limit     int
	Peer, IKE string
}

func (q SAQuery) match(sa agent.SAInfo) bool {
	if q.Peer != "" {
		host, _, err := net.SplitHostPort(sa.Remote)
		if err != nil {
			host = sa.Remote
		}
		if q.Peer != sa.Remote && q.Peer != host && q.Peer != sa.RemoteID {
			return false
		}
	}
	return q.IKE == "" || q.IKE == sa.IKE || q.IKE == sa.Child
}

func (s *Server) sas(w http.ResponseWriter, r *http.Request) error {
	qs := r.URL.Query()
	q := SAQuery{Peer: qs.Get("peer"), IKE: qs.Get("ike")}
	if v := qs.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return badRequest("limit %q: want a non-negative integer", v)
		}
		q.Limit = n
	}
	all := s.b.SAs()
	list := all[:0:0]
	for _, sa := range all {
		if q.match(sa) {
			list = append(list, sa)
		}
	}
	w.Header().Set(HeaderTotal, strconv.Itoa(len(list)))
	if q.Limit > 0 && q.Limit < len(list) {
		list = list[:q.Limit]
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) peers(w http.ResponseWriter, r *http.Request) error {
	p, err := s.b.RaftPeers()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func nodeBody(r *http.Request, required bool) (string, error) {
	var req NodeRequest
	if err := decode(r, &req); err != nil {
		return "", err
	}
	req.Node = strings.TrimSpace(req.Node)
	if required && req.Node == "" {
		return "", badRequest(`node: required (body {"node": "<id>"})`)
	}
	return req.Node, nil
}

func (s *Server) promote(w http.ResponseWriter, r *http.Request) error {
	node, err := nodeBody(r, true)
	if err != nil {
		return err
	}
	h, err := s.b.Promote(r.Context(), node)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

func (s *Server) drain(w http.ResponseWriter, r *http.Request) error {
	// drain takes no parameters: a body naming any is refused, not ignored.
	var none struct{}
	if err := decode(r, &none); err != nil {
		return err
	}
	h, err := s.b.Drain(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

func (s *Server) removePeer(w http.ResponseWriter, r *http.Request) error {
	node, err := nodeBody(r, true)
	if err != nil {
		return err
	}
	if err := s.b.RemovePeer(r.Context(), node); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": node})
	return nil
}

func (s *Server) transfer(w http.ResponseWriter, r *http.Request) error {
	node, err := nodeBody(r, false)
	if err != nil {
		return err
	}
	h, err := s.b.TransferLeadership(r.Context(), node)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

// Snapshot headers.
const (
	HeaderSnapshotIndex  = "X-Handoff-Snapshot-Index"
	HeaderSnapshotSHA256 = "X-Handoff-Snapshot-Sha256"
)

func (s *Server) saveSnapshot(w http.ResponseWriter, r *http.Request) error {
	stale := false
	if v := r.URL.Query().Get("stale"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return badRequest("stale %q: want true or false", v)
		}
		stale = b
	}
	var buf bytes.Buffer
	info, err := s.b.SaveSnapshot(r.Context(), &buf, stale)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Header().Set(HeaderSnapshotIndex, strconv.FormatUint(info.Index, 10))
	w.Header().Set(HeaderSnapshotSHA256, info.SHA256)
	w.Header().Set("Cache-Control", "no-store")
	_, err = buf.WriteTo(w)
	if err != nil {
		s.log.Warn("sending snapshot", "err", err)
	}
	return nil
}

func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request) error {
	info, err := s.b.RestoreSnapshot(r.Context(), r.Body)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}
