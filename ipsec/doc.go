// Package ipsec is the real dataplane of a Handoff gateway: strongSwan's
// charon over VICI (package ipsec/vici) for what SAs exist and their IKE
// metadata, and the kernel's XFRM tables (package ipsec/xfrm) for their
// keys, policies and replay state. Dataplane implements agent.Dataplane
// and agent.Reestablisher.
//
// On the active gateway it exports exactly the CHILD_SAs charon reports
// (each with both XFRM states and the policies that reference them),
// follows charon's SA events to report changes, and reads the replay
// counters. On a gateway taking over it installs the replicated SAs with
// their outbound sequence numbers jumped ahead, then re-establishes IKE SAs
// to the peers so their next DPD or rekey finds one. A node that loses its
// lease fences itself by deleting its outbound states. See docs/ipsec.md.
package ipsec
