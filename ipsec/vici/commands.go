package vici

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// ListFilter narrows list-sas to one IKE SA config name or unique ID.
type ListFilter struct {
	IKE   string
	IKEID uint32
}

// ListSAs lists the IKE SAs and their CHILD_SAs. It waits for IKE SAs that
// charon is busy with rather than skipping them (no "noblock"): an SA left
// out would look deleted to the caller.
func (c *Client) ListSAs(ctx context.Context, f ListFilter) ([]IKESA, error) {
	return c.listOnce(ctx, f)
}

func (c *Client) listOnce(ctx context.Context, f ListFilter) ([]IKESA, error) {
	req := govici.NewMessage()
	if f.IKE != "" {
		if err := req.Set("ike", f.IKE); err != nil {
			return nil, fmt.Errorf("vici list-sas: building request: %w", err)
		}
	}
	if f.IKEID != 0 {
		if err := req.Set("ike-id", strconv.FormatUint(uint64(f.IKEID), 10)); err != nil {
			return nil, fmt.Errorf("vici list-sas: building request: %w", err)
		}
	}
	msgs, err := c.stream(ctx, "list-sas", "list-sa", req)
	if err != nil {
		return nil, err
	}
	var out []IKESA
	for _, m := range msgs {
		sas, err := parseIKEMessage(m, "list-sa")
		if err != nil {
			return nil, fmt.Errorf("vici list-sas: %w", err)
		}
		out = append(out, sas...)
	}
	return out, nil
}

// Stats is the part of charon's stats reply Handoff uses.
type Stats struct {
	IKESAs         uint64
	HalfOpenIKESAs uint64
	WorkersTotal   uint64
	WorkersIdle    uint64
	Plugins        []string
}

// Stats asks charon for its counters; it doubles as a liveness check.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	resp, err := c.call(ctx, "stats", nil)
	if err != nil {
		return Stats{}, err
	}
	var perr error
	root := newSection(resp, "stats", &perr)
	var st Stats
	if ikes, ok := root.sub("ikesas"); ok {
		st.IKESAs = ikes.uint("total", 64)
		st.HalfOpenIKESAs = ikes.uint("half-open", 64)
	} else {
		root.fail("ikesas", "missing")
	}
	if w, ok := root.sub("workers"); ok {
		st.WorkersTotal = w.uint("total", 64)
		st.WorkersIdle = w.uint("idle", 64)
	}
	st.Plugins = root.list("plugins")
	if perr != nil {
		return Stats{}, fmt.Errorf("vici stats: %w", perr)
	}
	return st, nil
}

// Version is charon's version reply.
type Version struct {
	Daemon, Version, Sysname, Release, Machine string
}

// Version asks charon for its version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	resp, err := c.call(ctx, "version", nil)
	if err != nil {
		return Version{}, err
	}
	var perr error
	s := newSection(resp, "version", &perr)
	v := Version{Daemon: s.str("daemon"), Version: s.required("version"), Sysname: s.str("sysname"), Release: s.str("release"), Machine: s.str("machine")}
	if perr != nil {
		return Version{}, fmt.Errorf("vici version: %w", perr)
	}
	return v, nil
}

// InitiateRequest names what to initiate. With Child empty only the IKE SA
// is established.
type InitiateRequest struct {
	Child string
	IKE   string
	// Timeout is how long charon waits for the result. Zero waits until
	// the SA is up or failed (bounded by the context's deadline if it has
	// one); negative returns at once without waiting.
	Timeout    time.Duration
	InitLimits bool
}

// Initiate starts an IKE SA and/or CHILD_SA from a loaded connection.
func (c *Client) Initiate(ctx context.Context, r InitiateRequest) error {
	if r.Child == "" && r.IKE == "" {
		return fmt.Errorf("vici initiate: no child or IKE config name")
	}
	req := govici.NewMessage()
	set := setter{m: req}
	set.str("child", r.Child)
	set.str("ike", r.IKE)
	set.int("timeout", timeoutMillis(ctx, r.Timeout))
	if r.InitLimits {
		set.str("init-limits", "yes")
	}
	if set.err != nil {
		return fmt.Errorf("vici initiate: building request: %w", set.err)
	}
	_, err := c.call(ctx, "initiate", req)
	return err
}

// timeoutMillis converts a wait into charon's millisecond timeout: charon
// should give up no later than the caller does.
func timeoutMillis(ctx context.Context, d time.Duration) int64 {
	if d < 0 {
		return -1
	}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			left = time.Millisecond
		}
		if d == 0 || left < d {
			d = left
		}
	}
	ms := d.Milliseconds()
	if d > 0 && ms == 0 {
		ms = 1
	}
	if ms > math.MaxInt32 {
		ms = math.MaxInt32
	}
	return ms
}

// TerminateRequest selects SAs to terminate: by config name or unique ID.
// With Child or ChildID set, CHILD_SAs are terminated, else IKE SAs.
type TerminateRequest struct {
	Child   string
	IKE     string
	ChildID uint32
	IKEID   uint32
	Force   bool
	Timeout time.Duration // as in InitiateRequest
}

// Terminate terminates matching SAs and returns how many matched and how
// many were terminated.
func (c *Client) Terminate(ctx context.Context, r TerminateRequest) (matches, terminated int, err error) {
	req := govici.NewMessage()
	set := setter{m: req}
	set.str("child", r.Child)
	set.str("ike", r.IKE)
	set.id("child-id", r.ChildID)
	set.id("ike-id", r.IKEID)
	if r.Force {
		set.str("force", "yes")
	}
	set.int("timeout", timeoutMillis(ctx, r.Timeout))
	if set.err != nil {
		return 0, 0, fmt.Errorf("vici terminate: building request: %w", set.err)
	}
	resp, err := c.call(ctx, "terminate", req)
	if err != nil {
		return 0, 0, err
	}
	var perr error
	s := newSection(resp, "terminate", &perr)
	matches, terminated = int(s.uint("matches", 31)), int(s.uint("terminated", 31))
	if perr != nil {
		return 0, 0, fmt.Errorf("vici terminate: %w", perr)
	}
	return matches, terminated, nil
}

// RekeyRequest selects SAs to rekey, like TerminateRequest. Reauth asks for
// an IKE reauthentication instead of a rekey.
type RekeyRequest struct {
	Child   string
	IKE     string
	ChildID uint32
	IKEID   uint32
	Reauth  bool
}

// Rekey queues rekeying of matching SAs and returns how many matched.
func (c *Client) Rekey(ctx context.Context, r RekeyRequest) (int, error) {
	req := govici.NewMessage()
	set := setter{m: req}
	set.str("child", r.Child)
	set.str("ike", r.IKE)
	set.id("child-id", r.ChildID)
	set.id("ike-id", r.IKEID)
	if r.Reauth {
		set.str("reauth", "yes")
	}
	if set.err != nil {
		return 0, fmt.Errorf("vici rekey: building request: %w", set.err)
	}
	resp, err := c.call(ctx, "rekey", req)
	if err != nil {
		return 0, err
	}
	var perr error
	n := int(newSection(resp, "rekey", &perr).uint("matches", 31))
	if perr != nil {
		return 0, fmt.Errorf("vici rekey: %w", perr)
	}
	return n, nil
}

// RedirectRequest selects IKEv2 SAs to redirect (RFC 5685) to Gateway (an
// IP address or FQDN): by config name, unique ID, peer address or subnet
// (PeerIP), or peer identity (PeerID).
type RedirectRequest struct {
	IKE     string
	IKEID   uint32
	PeerIP  string
	PeerID  string
	Gateway string
}

// Redirect asks charon to redirect matching IKE SAs and returns how many
// matched.
func (c *Client) Redirect(ctx context.Context, r RedirectRequest) (int, error) {
	if r.Gateway == "" {
		return 0, fmt.Errorf("vici redirect: no target gateway")
	}
	req := govici.NewMessage()
	set := setter{m: req}
	set.str("ike", r.IKE)
	set.id("ike-id", r.IKEID)
	set.str("peer-ip", r.PeerIP)
	set.str("peer-id", r.PeerID)
	set.str("gateway", r.Gateway)
	if set.err != nil {
		return 0, fmt.Errorf("vici redirect: building request: %w", set.err)
	}
	resp, err := c.call(ctx, "redirect", req)
	if err != nil {
		return 0, err
	}
	var perr error
	n := int(newSection(resp, "redirect", &perr).uint("matches", 31))
	if perr != nil {
		return 0, fmt.Errorf("vici redirect: %w", perr)
	}
	return n, nil
}

// LoadConn loads (or replaces) connection name. body is the connection's
// swanctl.conf section as nested maps: values are strings, integers,
// booleans, string lists or nested map[string]any sections.
func (c *Client) LoadConn(ctx context.Context, name string, body map[string]any) error {
	if name == "" {
		return fmt.Errorf("vici load-conn: empty connection name")
	}
	conn, err := MessageFromMap(body)
	if err != nil {
		return fmt.Errorf("vici load-conn %s: %w", name, err)
	}
	req := govici.NewMessage()
	if err := req.Set(name, conn); err != nil {
		return fmt.Errorf("vici load-conn %s: %w", name, err)
	}
	_, err = c.call(ctx, "load-conn", req)
	return err
}

// UnloadConn unloads connection name. Established SAs are not affected.
func (c *Client) UnloadConn(ctx context.Context, name string) error {
	req := govici.NewMessage()
	if err := req.Set("name", name); err != nil {
		return fmt.Errorf("vici unload-conn %s: %w", name, err)
	}
	_, err := c.call(ctx, "unload-conn", req)
	return err
}

// MessageFromMap builds a VICI message from nested maps with the keys in
// sorted order, so the same body always encodes to the same bytes.
func MessageFromMap(body map[string]any) (*govici.Message, error) {
	m := govici.NewMessage()
	keys := make([]string, 0, len(body))
	for k := range body {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var v any
		switch x := body[k].(type) {
		case map[string]any:
			sub, err := MessageFromMap(x)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			v = sub
		case string, []string, bool:
			v = x
		case []any:
			list := make([]string, 0, len(x))
			for i, item := range x {
				s, ok := scalarString(item)
				if !ok {
					return nil, fmt.Errorf("%s[%d]: unsupported list item type %T", k, i, item)
				}
				list = append(list, s)
			}
			v = list
		default:
			s, ok := scalarString(x)
			if !ok {
				return nil, fmt.Errorf("%s: unsupported value type %T", k, x)
			}
			v = s
		}
		if err := m.Set(k, v); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
	}
	return m, nil
}

func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		if x {
			return "yes", true
		}
		return "no", true
	case time.Duration:
		return strconv.FormatInt(int64(x/time.Second), 10) + "s", true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(rv.Int(), 10), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(rv.Uint(), 10), true
	case reflect.Float32, reflect.Float64:
		f := rv.Float()
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return strconv.FormatInt(int64(f), 10), true
		}
	}
	return "", false
}

// setter adds optional request fields, skipping empty ones.
type setter struct {
	m   *govici.Message
	err error
}

func (s *setter) str(k, v string) {
	if v != "" && s.err == nil {
		s.err = s.m.Set(k, v)
	}
}

func (s *setter) id(k string, v uint32) {
	if v != 0 {
		s.str(k, strconv.FormatUint(uint64(v), 10))
	}
}

func (s *setter) int(k string, v int64) {
	s.str(k, strconv.FormatInt(v, 10))
}
