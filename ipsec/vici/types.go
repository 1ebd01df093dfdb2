package vici

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// IKESA is one IKE SA as list-sas and the IKE/CHILD events describe it.
// Times charon reports relative to its own clock ("established 12 s ago")
// stay relative here; the caller anchors them to when it read the message.
type IKESA struct {
	Name         string // connection name (the section key)
	UniqueID     uint32
	Version      uint8
	State        string // e.g. ESTABLISHED, CONNECTING, DELETING
	LocalHost    netip.Addr
	LocalPort    uint16
	LocalID      string
	RemoteHost   netip.Addr
	RemotePort   uint16
	RemoteID     string
	RemoteEAPID  string
	Initiator    bool
	InitiatorSPI uint64
	ResponderSPI uint64
	NATLocal     bool
	NATRemote    bool
	NATFake      bool
	NATAny       bool
	EncrAlg      string
	IntegAlg     string
	PRFAlg       string
	DHGroup      string
	// Established is how long the IKE SA has been up; RekeyIn and ReauthIn
	// how long until it is rekeyed or reauthenticated (zero if not set).
	Established time.Duration
	RekeyIn     time.Duration
	ReauthIn    time.Duration
	LocalVIPs   []string
	RemoteVIPs  []string
	Children    []ChildSA
}

// Local returns the local IKE endpoint.
func (i *IKESA) Local() netip.AddrPort { return netip.AddrPortFrom(i.LocalHost, i.LocalPort) }

// Remote returns the remote IKE endpoint.
func (i *IKESA) Remote() netip.AddrPort { return netip.AddrPortFrom(i.RemoteHost, i.RemotePort) }

// ChildSA is one CHILD_SA of an IKE SA.
type ChildSA struct {
	Key      string // section key, e.g. "net-7"
	Name     string // child config name
	UniqueID uint32
	Reqid    uint32
	State    string // e.g. INSTALLED, REKEYED, DELETING
	Mode     string // TUNNEL, TRANSPORT, BEET
	Protocol string // ESP or AH
	Encap    bool
	SPIIn    uint32
	SPIOut   uint32
	CPIIn    uint16
	CPIOut   uint16
	// Marks and interface IDs; a mask of 0 with a value set means the
	// full mask (charon omits the mask when it is 0xffffffff).
	MarkIn, MarkMaskIn   uint32
	MarkOut, MarkMaskOut uint32
	IfIDIn, IfIDOut      uint32
	EncrAlg              string
	EncrKeysize          uint32
	IntegAlg             string
	IntegKeysize         uint32
	DHGroup              string
	ESN                  bool
	BytesIn, PacketsIn   uint64
	BytesOut, PacketsOut uint64
	// UseIn/UseOut: time since the last packet (-1 if none yet).
	UseIn, UseOut time.Duration
	RekeyIn       time.Duration
	LifeIn        time.Duration
	Installed     time.Duration // how long ago it was installed
	LocalTS       []string
	RemoteTS      []string
}

// HasSPIs reports whether charon listed both SPIs, which it does only for
// CHILD_SAs with kernel state (INSTALLED, REKEYING, REKEYED).
func (c *ChildSA) HasSPIs() bool { return c.SPIIn != 0 && c.SPIOut != 0 }

// section reads fields of one message section and remembers the first
// error, naming the path to the bad field.
type section struct {
	m    *govici.Message
	path string
	errp *error
}

func newSection(m *govici.Message, path string, errp *error) section {
	return section{m: m, path: path, errp: errp}
}

func (s section) fail(key, format string, args ...any) {
	if *s.errp == nil {
		*s.errp = fmt.Errorf("%w: %s %s: %s", ErrMalformed, s.path, key, fmt.Sprintf(format, args...))
	}
}

func (s section) has(key string) bool { return s.m.Get(key) != nil }

func (s section) str(key string) string {
	switch v := s.m.Get(key).(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		s.fail(key, "want a value, got %s", kindOf(v))
		return ""
	}
}

func (s section) required(key string) string {
	if !s.has(key) {
		s.fail(key, "missing")
		return ""
	}
	return s.str(key)
}

func (s section) list(key string) []string {
	switch v := s.m.Get(key).(type) {
	case nil:
		return nil
	case []string:
		return append([]string(nil), v...)
	default:
		s.fail(key, "want a list, got %s", kindOf(v))
		return nil
	}
}

func (s section) sub(key string) (section, bool) {
	switch v := s.m.Get(key).(type) {
	case nil:
		return section{}, false
	case *govici.Message:
		return section{m: v, path: s.path + " " + strconv.Quote(key), errp: s.errp}, true
	default:
		s.fail(key, "want a section, got %s", kindOf(v))
		return section{}, false
	}
}

func (s section) uint(key string, bits int) uint64 {
	v := s.str(key)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, bits)
	if err != nil {
		s.fail(key, "%q is not a %d-bit unsigned number", v, bits)
	}
	return n
}

func (s section) hex(key string, bits int) uint64 {
	v := s.str(key)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseUint(v, 16, bits)
	if err != nil {
		s.fail(key, "%q is not %d-bit hex", v, bits)
	}
	return n
}

func (s section) seconds(key string) time.Duration {
	v := s.str(key)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		// charon prints ages as unsigned differences of two clock readings
		// (vici_query.c: now - use time); a stamp taken just after "now"
		// wraps to just under 2^64 (seen in the lab: use-in
		// 18446744073709551615). That is a small negative age, not garbage.
		if u, uerr := strconv.ParseUint(v, 10, 64); uerr == nil && u >= 1<<63 {
			n, err = int64(u), nil
		}
	}
	if err != nil || n > int64(time.Duration(1<<62)/time.Second) || n < -int64(time.Duration(1<<62)/time.Second) {
		s.fail(key, "%q is not a number of seconds", v)
		return 0
	}
	return time.Duration(n) * time.Second
}

func (s section) yes(key string) bool {
	switch v := s.str(key); v {
	case "", "no", "0":
		return false
	case "yes", "1":
		return true
	default:
		s.fail(key, "%q is not yes or no", v)
		return false
	}
}

func (s section) addr(key string) netip.Addr {
	v := s.str(key)
	if v == "" || v == "%any" || v == "%any6" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		s.fail(key, "%q is not an IP address", v)
	}
	return a.Unmap()
}

func kindOf(v any) string {
	switch v.(type) {
	case string:
		return "a value"
	case []string:
		return "a list"
	case *govici.Message:
		return "a section"
	}
	return fmt.Sprintf("%T", v)
}

// parseIKE reads the body of an IKE SA section named name, with its
// child-sas section if there is one.
func parseIKE(s section, name string) IKESA {
	ike := IKESA{
		Name:         name,
		UniqueID:     uint32(s.uint("uniqueid", 32)),
		Version:      uint8(s.uint("version", 8)),
		State:        s.str("state"),
		LocalHost:    s.addr("local-host"),
		LocalPort:    uint16(s.uint("local-port", 16)),
		LocalID:      s.str("local-id"),
		RemoteHost:   s.addr("remote-host"),
		RemotePort:   uint16(s.uint("remote-port", 16)),
		RemoteID:     s.str("remote-id"),
		RemoteEAPID:  s.str("remote-eap-id"),
		Initiator:    s.yes("initiator"),
		InitiatorSPI: s.hex("initiator-spi", 64),
		ResponderSPI: s.hex("responder-spi", 64),
		NATLocal:     s.yes("nat-local"),
		NATRemote:    s.yes("nat-remote"),
		NATFake:      s.yes("nat-fake"),
		NATAny:       s.yes("nat-any"),
		EncrAlg:      s.str("encr-alg"),
		IntegAlg:     s.str("integ-alg"),
		PRFAlg:       s.str("prf-alg"),
		DHGroup:      s.str("dh-group"),
		Established:  s.seconds("established"),
		RekeyIn:      s.seconds("rekey-time"),
		ReauthIn:     s.seconds("reauth-time"),
		LocalVIPs:    s.list("local-vips"),
		RemoteVIPs:   s.list("remote-vips"),
	}
	if !s.has("uniqueid") {
		s.fail("uniqueid", "missing")
	}
	if children, ok := s.sub("child-sas"); ok {
		for _, key := range children.m.Keys() {
			cs, ok := children.sub(key)
			if !ok {
				continue
			}
			ike.Children = append(ike.Children, parseChild(cs, key))
		}
	}
	return ike
}

func parseChild(s section, key string) ChildSA {
	c := ChildSA{
		Key:          key,
		Name:         s.required("name"),
		UniqueID:     uint32(s.uint("uniqueid", 32)),
		Reqid:        uint32(s.uint("reqid", 32)),
		State:        s.str("state"),
		Mode:         s.str("mode"),
		Protocol:     s.str("protocol"),
		Encap:        s.yes("encap"),
		SPIIn:        uint32(s.hex("spi-in", 32)),
		SPIOut:       uint32(s.hex("spi-out", 32)),
		CPIIn:        uint16(s.hex("cpi-in", 16)),
		CPIOut:       uint16(s.hex("cpi-out", 16)),
		MarkIn:       uint32(s.hex("mark-in", 32)),
		MarkMaskIn:   uint32(s.hex("mark-mask-in", 32)),
		MarkOut:      uint32(s.hex("mark-out", 32)),
		MarkMaskOut:  uint32(s.hex("mark-mask-out", 32)),
		IfIDIn:       uint32(s.hex("if-id-in", 32)),
		IfIDOut:      uint32(s.hex("if-id-out", 32)),
		EncrAlg:      s.str("encr-alg"),
		EncrKeysize:  uint32(s.uint("encr-keysize", 32)),
		IntegAlg:     s.str("integ-alg"),
		IntegKeysize: uint32(s.uint("integ-keysize", 32)),
		DHGroup:      s.str("dh-group"),
		ESN:          s.yes("esn"),
		BytesIn:      s.uint("bytes-in", 64),
		PacketsIn:    s.uint("packets-in", 64),
		BytesOut:     s.uint("bytes-out", 64),
		PacketsOut:   s.uint("packets-out", 64),
		UseIn:        -1,
		UseOut:       -1,
		RekeyIn:      s.seconds("rekey-time"),
		LifeIn:       s.seconds("life-time"),
		Installed:    s.seconds("install-time"),
		LocalTS:      s.list("local-ts"),
		RemoteTS:     s.list("remote-ts"),
	}
	if !s.has("uniqueid") {
		s.fail("uniqueid", "missing")
	}
	// charon omits the mask when it is all ones.
	if s.has("mark-in") && !s.has("mark-mask-in") {
		c.MarkMaskIn = 0xffffffff
	}
	if s.has("mark-out") && !s.has("mark-mask-out") {
		c.MarkMaskOut = 0xffffffff
	}
	if s.has("use-in") {
		c.UseIn = max(s.seconds("use-in"), 0)
	}
	if s.has("use-out") {
		c.UseOut = max(s.seconds("use-out"), 0)
	}
	return c
}

// parseIKEMessage reads a message whose top-level sections are IKE SAs
// (a list-sa event); other top-level keys are skipped.
func parseIKEMessage(m *govici.Message, what string) ([]IKESA, error) {
	var err error
	root := newSection(m, what, &err)
	var out []IKESA
	for _, key := range m.Keys() {
		if _, isSection := m.Get(key).(*govici.Message); !isSection {
			continue
		}
		s, _ := root.sub(key)
		out = append(out, parseIKE(s, key))
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// onlySection returns the single IKE SA section of an event message.
func onlySection(root section) (section, string) {
	var name string
	var found section
	n := 0
	for _, key := range root.m.Keys() {
		if _, isSection := root.m.Get(key).(*govici.Message); isSection {
			found, _ = root.sub(key)
			name = key
			n++
		}
	}
	switch n {
	case 0:
		root.fail("", "no IKE SA section")
	case 1:
	default:
		root.fail("", "%d IKE SA sections, want one", n)
	}
	return found, name
}

// String is a one-line description for logs.
func (i *IKESA) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "IKE_SA %s[%d] %s %s<->%s", i.Name, i.UniqueID, i.State, i.Local(), i.Remote())
	for _, c := range i.Children {
		fmt.Fprintf(&b, " child %s{%d} %s in %08x out %08x", c.Name, c.UniqueID, c.State, c.SPIIn, c.SPIOut)
	}
	return b.String()
}
