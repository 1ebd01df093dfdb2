package raftstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// CmdType is the first byte of every log entry. Types with IgnoreIfUnknown
// set are advisory: a node that does not know them (an older version during
// a rolling upgrade) skips them instead of refusing the entry.
type CmdType uint8

// IgnoreIfUnknown marks a command type an older node may skip.
const IgnoreIfUnknown CmdType = 0x80

// Command types. Never renumber: they are in every existing log.
const (
	CmdMember       CmdType = 1
	CmdRemoveMember CmdType = 2
	CmdClaim        CmdType = 3
	CmdActive       CmdType = 4
	CmdSABatch      CmdType = 5
	CmdReplayBatch  CmdType = 6
	CmdFailed       CmdType = 7
	CmdHealth       CmdType = 8 | IgnoreIfUnknown
	// CmdHandover is advisory: an older node that skips it only loses the
	// reason of the next takeover.
	CmdHandover CmdType = 9 | IgnoreIfUnknown
	// CmdReplayCurrent is advisory: an older node that skips it keeps its
	// counters' clocks older than they are, which only makes its takeover
	// jump further.
	CmdReplayCurrent CmdType = 10 | IgnoreIfUnknown
	// CmdIKEChains is advisory: an older node that skips it holds no IKE
	// state, and its takeover re-establishes the IKE_SAs as before.
	CmdIKEChains CmdType = 11 | IgnoreIfUnknown
)

func (t CmdType) String() string {
	switch t {
	case CmdMember:
		return "member"
	case CmdRemoveMember:
		return "remove-member"
	case CmdClaim:
		return "claim"
	case CmdActive:
		return "active"
	case CmdSABatch:
		return "sa-batch"
	case CmdReplayBatch:
		return "replay-batch"
	case CmdFailed:
		return "failover-failed"
	case CmdHealth:
		return "health"
	case CmdHandover:
		return "handover"
	case CmdReplayCurrent:
		return "replay-current"
	case CmdIKEChains:
		return "ike-chains"
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

// payloadVersion is the version of every payload this code writes. A decoder
// refuses higher versions: a newer node's entry is not guessed at.
const payloadVersion = 1

// Errors of the envelope decoder.
var (
	ErrMalformed   = errors.New("malformed command")
	ErrUnknownType = errors.New("unknown command type")
)

// Role of a member.
type Role string

const (
	RoleGateway Role = "gateway"
	RoleWitness Role = "witness"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleGateway || r == RoleWitness }

// Phase of the active assignment.
type Phase string

const (
	PhaseClaiming Phase = "claiming"
	PhaseActive   Phase = "active"
)

// MemberCmd adds or updates a member's metadata.
type MemberCmd struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Role     Role   `json:"role"`
	Priority int    `json:"priority"`
	// Version is the member's build (buildinfo), so that a rolling upgrade
	// can be followed; an older node's record has none.
	Version string `json:"version,omitempty"`
}

// RemoveMemberCmd removes a member.
type RemoveMemberCmd struct {
	ID string `json:"id"`
}

// ClaimCmd records a node's intent to take the active role. The term is
// the Raft term of the log entry, filled in by the FSM, never trusted from
// the payload. Reason says why the role moves (see Reason), Detail the
// particulars ("gw1 silent for 76ms").
type ClaimCmd struct {
	Node   string    `json:"node"`
	At     time.Time `json:"at"`
	Reason Reason    `json:"reason,omitempty"`
	Detail string    `json:"detail,omitempty"`
	From   string    `json:"from,omitempty"`
}

// Timings of one takeover, per phase, in the order the phases run:
// detect, elect, claim, install, move (see agent.lead).
type Timings struct {
	Detect  time.Duration `json:"detect"`
	Elect   time.Duration `json:"elect"`
	Claim   time.Duration `json:"claim"`
	Install time.Duration `json:"install"`
	Move    time.Duration `json:"move"`
	Total   time.Duration `json:"total"`
}

// ActiveCmd records that the claiming node carries the tunnels.
type ActiveCmd struct {
	Node    string    `json:"node"`
	At      time.Time `json:"at"`
	Timings Timings   `json:"timings"`
	SAs     int       `json:"sas"`
}

// FailedCmd records a takeover that did not complete.
type FailedCmd struct {
	Node  string    `json:"node"`
	At    time.Time `json:"at"`
	Phase string    `json:"phase"`
	Error string    `json:"error"`
}

// HealthCmd records what one observer sees of one subject.
type HealthCmd struct {
	Observer string    `json:"observer"`
	Subject  string    `json:"subject"`
	Healthy  bool      `json:"healthy"`
	Detail   string    `json:"detail,omitempty"`
	At       time.Time `json:"at"`
}

// SAUpsert is one sealed CHILD_SA.
type SAUpsert struct {
	ID     string
	Sealed []byte
}

// SABatchCmd is a group commit of SA changes.
type SABatchCmd struct {
	Upserts []SAUpsert
	Deletes []string
}

// ReplayRecord is the replay state of one SA (not secret: sequence numbers).
type ReplayRecord struct {
	ID     string
	OSeq   uint64
	Seq    uint64
	Bitmap []uint32
	ReadAt time.Time
}

// ReplayBatchCmd is a group commit of replay states.
type ReplayBatchCmd struct {
	Records []ReplayRecord
}

// ReplayCurrentCmd says that the active has read every SA's counters and
// found each equal to its replay record in the log, or committed the new
// ones in the entries before this one: every record is as fresh as this
// entry. Each node restarts its local clock of every SA (FSM.AppliedAt)
// when it applies it. Without it an SA whose counters stand still gets no
// new record, and its clock grows old with the quiet: after an hour idle a
// takeover's jump (a million packets a second of staleness by default)
// overran the 32-bit sequence number space and the SA could not be
// installed at all.
type ReplayCurrentCmd struct {
	// ReadAt is the active's clock when it read the counters (for the
	// record: clocks of different hosts are not compared).
	ReadAt time.Time `json:"read_at"`
}

// IKEChainsCmd is a group commit of IKE lineage chains (see
// ipsec/hasync.Lineage): each upsert replaces the sealed replay of one
// chain, each delete ends one. Node is the proposer: the state machine
// takes chains only from the node that holds the active role, so that an
// old active whose charon still talks cannot write over its successor's.
type IKEChainsCmd struct {
	Node    string
	Upserts []SAUpsert
	Deletes []string
}

// Command is a decoded log entry.
type Command struct {
	Type    CmdType
	Version uint8
	// Payload is one of the *Cmd types above, or nil for a skipped type.
	Payload any
}

// Encode builds the log entry for a payload.
func Encode(payload any) ([]byte, error) {
	var t CmdType
	switch p := payload.(type) {
	case *MemberCmd:
		t = CmdMember
	case *RemoveMemberCmd:
		t = CmdRemoveMember
	case *ClaimCmd:
		t = CmdClaim
	case *ActiveCmd:
		t = CmdActive
	case *FailedCmd:
		t = CmdFailed
	case *HealthCmd:
		t = CmdHealth
	case *HandoverCmd:
		t = CmdHandover
	case *ReplayCurrentCmd:
		t = CmdReplayCurrent
	case *SABatchCmd:
		return encodeSABatch(p), nil
	case *ReplayBatchCmd:
		return encodeReplayBatch(p), nil
	case *IKEChainsCmd:
		return encodeIKEChains(p), nil
	default:
		return nil, fmt.Errorf("encoding command: unsupported payload %T", payload)
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("encoding %s command: %w", t, err)
	}
	return append([]byte{byte(t), payloadVersion}, body...), nil
}

// Decode parses a log entry. Unknown types with IgnoreIfUnknown decode to a
// Command with a nil Payload; other unknown types are an error.
func Decode(data []byte) (Command, error) {
	if len(data) < 2 {
		return Command{}, fmt.Errorf("%w: %d bytes, need at least 2", ErrMalformed, len(data))
	}
	c := Command{Type: CmdType(data[0]), Version: data[1]}
	body := data[2:]
	var p any
	switch c.Type {
	case CmdMember:
		p = new(MemberCmd)
	case CmdRemoveMember:
		p = new(RemoveMemberCmd)
	case CmdClaim:
		p = new(ClaimCmd)
	case CmdActive:
		p = new(ActiveCmd)
	case CmdFailed:
		p = new(FailedCmd)
	case CmdHealth:
		p = new(HealthCmd)
	case CmdHandover:
		p = new(HandoverCmd)
	case CmdReplayCurrent:
		p = new(ReplayCurrentCmd)
	case CmdSABatch, CmdReplayBatch, CmdIKEChains:
	default:
		if c.Type&IgnoreIfUnknown != 0 {
			return c, nil
		}
		return c, fmt.Errorf("%w: %s", ErrUnknownType, c.Type)
	}
	if c.Version == 0 || c.Version > payloadVersion {
		return c, fmt.Errorf("%w: %s payload version %d, this node reads up to %d", ErrMalformed, c.Type, c.Version, payloadVersion)
	}
	var err error
	switch c.Type {
	case CmdSABatch:
		c.Payload, err = decodeSABatch(body)
	case CmdReplayBatch:
		c.Payload, err = decodeReplayBatch(body)
	case CmdIKEChains:
		c.Payload, err = decodeIKEChains(body)
	default:
		if err = json.Unmarshal(body, p); err == nil {
			c.Payload = p
		}
	}
	if err != nil {
		return c, fmt.Errorf("%w: %s payload: %w", ErrMalformed, c.Type, err)
	}
	return c, nil
}

// Binary layouts for the two hot commands: a rekey storm of thousands of
// SAs must not pay for JSON and base64.
//
//	sa batch:     n(uvarint) {id(str) sealed(bytes)}*n  m(uvarint) {id(str)}*m
//	replay batch: n(uvarint) {id(str) oseq seq(uvarint) bitmap(n32 u32*) readAt(i64 ns)}*n

//	ike chains:   node(str) n(uvarint) {key(str) sealed(bytes)}*n  m(uvarint) {key(str)}*m

const (
	maxBatch     = 1 << 20
	maxIDLen     = 256
	maxSealedLen = 1 << 16
	maxBitmapLen = 4096
	// maxChainLen bounds one sealed IKE chain: an IKE_SA with hundreds
	// of CHILD_SAs is a few hundred datagrams of a few hundred bytes.
	maxChainLen = 1 << 20
)

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeSABatch(c *SABatchCmd) []byte {
	size := 16
	for _, u := range c.Upserts {
		size += len(u.ID) + len(u.Sealed) + 8
	}
	b := make([]byte, 0, size)
	b = append(b, byte(CmdSABatch), payloadVersion)
	return appendUpserts(b, c.Upserts, c.Deletes)
}

// appendUpserts lays out sealed upserts and deletions (the SA batch's
// layout, which the IKE chains reuse).
func appendUpserts(b []byte, upserts []SAUpsert, deletes []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(upserts)))
	for _, u := range upserts {
		b = appendStr(b, u.ID)
		b = binary.AppendUvarint(b, uint64(len(u.Sealed)))
		b = append(b, u.Sealed...)
	}
	b = binary.AppendUvarint(b, uint64(len(deletes)))
	for _, id := range deletes {
		b = appendStr(b, id)
	}
	return b
}

func encodeIKEChains(c *IKEChainsCmd) []byte {
	size := 16 + len(c.Node)
	for _, u := range c.Upserts {
		size += len(u.ID) + len(u.Sealed) + 8
	}
	b := make([]byte, 0, size)
	b = append(b, byte(CmdIKEChains), payloadVersion)
	b = appendStr(b, c.Node)
	return appendUpserts(b, c.Upserts, c.Deletes)
}

func decodeIKEChains(body []byte) (*IKEChainsCmd, error) {
	c := &cursor{b: body}
	cmd := &IKEChainsCmd{Node: string(c.bytes("node", maxIDLen))}
	if c.err == nil && cmd.Node == "" {
		c.fail("IKE chains without a proposing node")
	}
	cmd.Upserts, cmd.Deletes = c.upserts("chain", maxChainLen, len(body))
	if err := c.done(); err != nil {
		return nil, err
	}
	return cmd, nil
}

func encodeReplayBatch(c *ReplayBatchCmd) []byte {
	b := make([]byte, 0, 8+len(c.Records)*48)
	b = append(b, byte(CmdReplayBatch), payloadVersion)
	b = binary.AppendUvarint(b, uint64(len(c.Records)))
	for _, r := range c.Records {
		b = appendStr(b, r.ID)
		b = binary.AppendUvarint(b, r.OSeq)
		b = binary.AppendUvarint(b, r.Seq)
		b = binary.AppendUvarint(b, uint64(len(r.Bitmap)))
		for _, w := range r.Bitmap {
			b = binary.BigEndian.AppendUint32(b, w)
		}
		b = binary.BigEndian.AppendUint64(b, uint64(r.ReadAt.UnixNano()))
	}
	return b
}

// cursor reads the binary layouts with bounds checks; the first error sticks.
type cursor struct {
	b   []byte
	err error
}

func (c *cursor) fail(format string, a ...any) {
	if c.err == nil {
		c.err = fmt.Errorf(format, a...)
	}
}

func (c *cursor) uvar(what string, max uint64) uint64 {
	if c.err != nil {
		return 0
	}
	v, n := binary.Uvarint(c.b)
	if n <= 0 {
		c.fail("%s: bad varint", what)
		return 0
	}
	if v > max {
		c.fail("%s %d exceeds %d", what, v, max)
		return 0
	}
	c.b = c.b[n:]
	return v
}

func (c *cursor) bytes(what string, max uint64) []byte {
	n := c.uvar(what+" length", max)
	if c.err != nil {
		return nil
	}
	if uint64(len(c.b)) < n {
		c.fail("%s: need %d bytes, have %d", what, n, len(c.b))
		return nil
	}
	out := c.b[:n:n]
	c.b = c.b[n:]
	return out
}

func (c *cursor) id() string {
	s := string(c.bytes("SA id", maxIDLen))
	if c.err == nil && s == "" {
		c.fail("empty SA id")
	}
	return s
}

func (c *cursor) fixed(what string, n int) []byte {
	if c.err != nil {
		return nil
	}
	if len(c.b) < n {
		c.fail("%s: need %d bytes, have %d", what, n, len(c.b))
		return nil
	}
	out := c.b[:n]
	c.b = c.b[n:]
	return out
}

// upserts reads what appendUpserts wrote; what names the entries, max
// bounds one sealed payload, size is the body's (capacity hint bound).
func (c *cursor) upserts(what string, max uint64, size int) ([]SAUpsert, []string) {
	var ups []SAUpsert
	n := c.uvar(what+" count", maxBatch)
	if c.err == nil && n > 0 {
		ups = make([]SAUpsert, 0, min(n, uint64(size/2)))
	}
	for i := uint64(0); i < n && c.err == nil; i++ {
		id := c.id()
		sealed := c.bytes("sealed "+what, max)
		if c.err == nil && len(sealed) == 0 {
			c.fail("%s %s: empty sealed payload", what, id)
		}
		ups = append(ups, SAUpsert{ID: id, Sealed: append([]byte(nil), sealed...)})
	}
	var dels []string
	m := c.uvar(what+" delete count", maxBatch)
	for i := uint64(0); i < m && c.err == nil; i++ {
		dels = append(dels, c.id())
	}
	return ups, dels
}

func (c *cursor) done() error {
	if c.err == nil && len(c.b) != 0 {
		c.fail("%d trailing bytes", len(c.b))
	}
	return c.err
}

func decodeSABatch(body []byte) (*SABatchCmd, error) {
	c := &cursor{b: body}
	cmd := &SABatchCmd{}
	cmd.Upserts, cmd.Deletes = c.upserts("SA", maxSealedLen, len(body))
	if err := c.done(); err != nil {
		return nil, err
	}
	return cmd, nil
}

func decodeReplayBatch(body []byte) (*ReplayBatchCmd, error) {
	c := &cursor{b: body}
	cmd := &ReplayBatchCmd{}
	n := c.uvar("record count", maxBatch)
	if c.err == nil && n > 0 {
		cmd.Records = make([]ReplayRecord, 0, min(n, uint64(len(body)/4)))
	}
	for i := uint64(0); i < n && c.err == nil; i++ {
		r := ReplayRecord{ID: c.id(), OSeq: c.uvar("oseq", 1<<63), Seq: c.uvar("seq", 1<<63)}
		words := c.uvar("bitmap length", maxBitmapLen)
		if raw := c.fixed("bitmap", int(words)*4); raw != nil && words > 0 {
			r.Bitmap = make([]uint32, words)
			for j := range r.Bitmap {
				r.Bitmap[j] = binary.BigEndian.Uint32(raw[j*4:])
			}
		}
		if ts := c.fixed("read time", 8); ts != nil {
			r.ReadAt = time.Unix(0, int64(binary.BigEndian.Uint64(ts))).UTC()
		}
		cmd.Records = append(cmd.Records, r)
	}
	if err := c.done(); err != nil {
		return nil, err
	}
	return cmd, nil
}
