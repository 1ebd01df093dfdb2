// Package vicitest stands in for charon's VICI socket in tests: a server
// that speaks the VICI wire protocol on a unix socket and plays a
// transcript (requests it expects, replies and events it sends), and a
// recording proxy that writes such transcripts from a real charon.
//
// Transcripts are text. Each step starts with a marker line; message
// bodies use the swanctl --raw --pretty layout (key = value, name { },
// name = [ ]):
//
//	> list-sas {}              a command the client must send next
//	< list-sa {                an event streamed back while it runs
//	  gw { uniqueid = 1 ... }
//	}
//	< response {               the command's reply
//	}
//	! child-updown {           an event pushed to subscribers (the server
//	  up = yes                 waits until someone subscribed to it)
//	  ...
//	}
//	! restart                  drop every session and listen anew, as a
//	                           restarted charon does
//
// A request body after "> cmd {" must match the request exactly.
package vicitest

import "github.com/handoffvpn/handoff/ipsec/vici/internal/wire"

// Msg is an ordered VICI message.
type Msg = wire.Msg

// Item is one element of a message: a value, a list or a section.
type Item = wire.Item
