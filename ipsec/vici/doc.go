// Package vici is Handoff's client for charon's VICI socket (strongSwan's
// versatile IKE control interface), built on github.com/strongswan/govici.
//
// It turns VICI messages into typed values and typed errors, and maps the
// protocol onto methods:
//
//	list-sas (streamed list-sa events)  Client.ListSAs
//	stats                               Client.Stats
//	version                             Client.Version
//	initiate                            Client.Initiate
//	terminate                           Client.Terminate
//	rekey                               Client.Rekey
//	redirect                            Client.Redirect
//	load-conn / unload-conn             Client.LoadConn / Client.UnloadConn
//	ike-updown, child-updown,           Client.Subscribe, Subscription.Next
//	ike-rekey, child-rekey events
//
// Plain commands go through govici on one session, serialized by the
// Client's mutex; every dial is bounded by Config.DialTimeout and the
// caller's context (govici's NewSession would dial without a deadline).
// Streamed commands (list-sas) and event subscriptions run on connections
// of their own, spoken with the small codec in internal/wire, because
// govici v0.8.0 loses events on both paths: a stream's final reply can
// overtake its queued events (the listing comes back short and the rest
// poisons the next command), and an event that arrives while a second
// event is being registered deadlocks the session. Both were reproduced
// against the test server (TestCommandsDuringStreamedList,
// TestEventsDuringRegistration).
//
// A Client redials lazily: when charon restarts, the command that notices
// the broken session fails with ErrUnavailable and the next one connects to
// the new charon. A Subscription ends with ErrUnavailable when charon goes
// away; the caller subscribes again and resynchronizes (charon forgets its
// SAs when it restarts, so a resync is what tells the caller).
//
// Malformed replies are reported with ErrMalformed and a path to the bad
// field, e.g. `list-sa "gw" child-sas "net-3" spi-in: "xyz" is not hex`.
package vici
