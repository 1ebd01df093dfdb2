// Package xfrm reads and writes the kernel's IPsec state (XFRM states and
// policies) over netlink, faithfully enough to move a live SA to another
// host: algorithms and keys, SPIs, reqid, mode, UDP encapsulation, replay
// window and ESN, marks and interface IDs, lifetimes, and the replay state
// (outbound sequence number, inbound sequence number and window bitmap).
//
// vishvananda/netlink's typed XFRM calls lose exactly the parts that
// matter here (XfrmStateList ignores XFRMA_REPLAY_ESN_VAL, XfrmStateAdd
// sends ESN replay state zeroed and drops the af-unspec flag and lifetime
// counters), so this package encodes and decodes the XFRM messages itself
// and uses the library's nl package only to carry them over a persistent
// socket.
//
// Writes are idempotent: Install adds a state, and when the kernel already
// has one under the same lookup key (destination, SPI, protocol, mark) it
// compares them, keeps the same SA and only moves its replay counters
// forward (never back: an outbound sequence number must never be reused),
// or replaces a different one. Dumps interrupted by concurrent changes
// (NLM_F_DUMP_INTR) are retried. Per-socket policies are skipped.
//
// All netlink traffic goes through the unexported kernel interface, so
// tests can drive the error paths (EEXIST, ENOENT, interrupted dumps)
// without root; the real kernel is exercised in the UML lab
// (TestPrivilegedKernel).
package xfrm
