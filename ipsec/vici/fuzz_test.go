package vici

import (
	"bytes"
	"os"
	"testing"

	govici "github.com/strongswan/govici/vici"

	"github.com/handoffvpn/handoff/internal/allocguard"
	"github.com/handoffvpn/handoff/ipsec/vici/internal/wire"
	"github.com/handoffvpn/handoff/ipsec/vici/vicitest"
)

// FuzzParse feeds arbitrary packets through the event and listing
// parsers: whatever charon (or something pretending to be it) sends, the
// client returns a value or an error, never a panic, and never allocates
// for a length the packet does not hold.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/session.transcript"); err == nil {
		if steps, err := vicitest.ParseTranscript(string(b)); err == nil {
			for _, st := range steps {
				if st.Body == nil || st.Kind == '>' {
					continue
				}
				var buf bytes.Buffer
				if err := wire.WritePacket(&buf, wire.Packet{Type: wire.Event, Name: st.Name, Msg: st.Body}); err == nil {
					f.Add(buf.Bytes())
				}
			}
		}
	}
	f.Add([]byte{0, 0, 0, 3, 7, 1, 'x'})
	f.Fuzz(func(t *testing.T, b []byte) {
		var (
			p   wire.Packet
			err error
		)
		allocguard.Check(t, "ReadPacket", len(b), func() { p, err = wire.ReadPacket(bytes.NewReader(b)) })
		if err != nil {
			return
		}
		m, err := toMessage(p.Msg)
		if err != nil {
			return
		}
		_, _ = parseIKEMessage(m, "list-sa")
		for _, kind := range SAEvents {
			_, _ = parseEvent(govici.Event{Name: string(kind), Message: m})
		}
		// govici keeps one value per key: only messages without repeated
		// keys (all charon sends) survive the conversion unchanged.
		if back, err := fromMessage(m); err == nil && uniqueKeys(p.Msg) && !back.Equal(p.Msg) {
			t.Fatalf("message changed converting through govici:\n%s\nvs\n%s", back.Format(""), p.Msg.Format(""))
		}
	})
}

func uniqueKeys(m *wire.Msg) bool {
	seen := map[string]bool{}
	for _, it := range m.Items {
		if seen[it.Key] || (it.Section != nil && !uniqueKeys(it.Section)) {
			return false
		}
		seen[it.Key] = true
	}
	return true
}
