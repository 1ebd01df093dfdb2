package sa

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// No way of printing or logging an SA shows its key: every fmt verb on the
// SA, its states and its algorithms, slog's text and JSON handlers, and
// encoding/json.
func TestKeysNeverPrinted(t *testing.T) {
	key := bytes.Repeat([]byte{0xA7, 0x3C, 0x5E, 0x91}, 5)
	auth := bytes.Repeat([]byte{0x6B, 0xD2}, 16)
	c := &ChildSA{ID: "gw-net-1",
		In: State{Src: netip.MustParseAddr("203.0.113.2"), Dst: netip.MustParseAddr("203.0.113.100"), Proto: ProtoESP, SPI: 0xc11cbbaf,
			AEAD: &Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128}},
		Out: State{Src: netip.MustParseAddr("203.0.113.100"), Dst: netip.MustParseAddr("203.0.113.2"), Proto: ProtoESP, SPI: 0xc156ca3c,
			Crypt: &Algo{Name: "cbc(aes)", Key: key}, Auth: &Algo{Name: "hmac(sha256)", Key: auth, TruncBits: 128}},
	}
	var outputs []string
	for _, v := range []any{c, *c, c.In, &c.In, c.Out, c.In.AEAD, *c.In.AEAD, c.Out.Auth} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q"} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("sa", "sa", c, "state", c.Out, "algo", c.In.AEAD)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("sa", "sa", c, "state", c.Out, "algo", c.In.AEAD)
	outputs = append(outputs, text.String(), js.String())
	for _, v := range []any{c, c.Out, c.In.AEAD} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outputs = append(outputs, string(b))
	}
	for _, k := range [][]byte{key, auth} {
		forms := []string{string(k), hex.EncodeToString(k), strings.ToUpper(hex.EncodeToString(k)),
			base64.StdEncoding.EncodeToString(k), fmt.Sprint(k[:8]), fmt.Sprintf("%#v", k[:4])}
		for _, out := range outputs {
			for _, f := range forms {
				if strings.Contains(out, f) {
					t.Fatalf("key material (%q) printed in:\n%s", f, out)
				}
			}
		}
	}
	if !strings.Contains(fmt.Sprint(c), "c156ca3c") || !strings.Contains(js.String(), "redacted") {
		t.Errorf("the SA is not described at all: %s / %s", fmt.Sprint(c), js.String())
	}
}
