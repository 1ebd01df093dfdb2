package main

import (
	"strings"
	"testing"
)

func TestSmokeReport(t *testing.T) {
	full := `{"probes_lost":0,"kernel":"6.1.176","esp_states":2,"boot_ms":1300.5,"tunnel_up_ms":210,"probes_sent":1000}`
	line, err := report("smoke", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"boot_ms":1300.5,"tunnel_up_ms":210,"probes_sent":1000,"probes_lost":0,"kernel":"6.1.176"}`; line != want {
		t.Errorf("line %s\nwant %s", line, want)
	}
	for _, bad := range []struct{ in, why string }{
		{strings.Replace(full, `"probes_lost":0`, `"probes_lost":3`, 1), "lost 3"},
		{strings.Replace(full, `"probes_sent":1000`, `"probes_sent":999`, 1), "sent 999"},
		{`{"boot_ms":1}`, `no "tunnel_up_ms"`},
		{`not json`, "reading the smoke result"},
	} {
		if _, err := report("smoke", []byte(bad.in)); err == nil || !strings.Contains(err.Error(), bad.why) {
			t.Errorf("%s: error %v, want one saying %q", bad.in, err, bad.why)
		}
	}
	if line, err := report("baseline", []byte(`{"gap_ms":2400}`)); err != nil || line != `{"gap_ms":2400}` {
		t.Errorf("baseline: %q %v", line, err)
	}
}
