package api

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/internal/allocguard"
)

func decodeBody(body string, v any) error {
	return decode(httptest.NewRequest("POST", "/v1/promote", strings.NewReader(body)), v)
}

// TestDecodeIsExactAboutFieldNames: encoding/json fills "node" from
// "Node", "NODE" or "nOdE" and keeps the last of two; the API takes a name
// only as its json tag spells it, once.
func TestDecodeIsExactAboutFieldNames(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{`{"Node": "gw2"}`, `unknown field "Node" (names are exact: "node")`},
		{`{"NODE": "gw2"}`, `unknown field "NODE"`},
		{`{"node": "gw2", "Node": "gw3"}`, `unknown field "Node"`},
		{`{"node": "gw2", "node": "gw3"}`, `field "node" given twice`},
		{`{"nod": "gw2"}`, `unknown field "nod"`},
		{`{"node": "gw2"}{}`, "trailing data"},
		{`["node"]`, "cannot unmarshal array"},
	} {
		var req NodeRequest
		err := decodeBody(c.body, &req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %s", c.body, err, c.want)
		}
		if req.Node != "" && !strings.Contains(c.want, "trailing") {
			t.Errorf("%s: a refused body filled node = %q", c.body, req.Node)
		}
	}
	for _, body := range []string{`{"node": "gw2"}`, " {\n\"node\":\"gw2\"} "} {
		var req NodeRequest
		if err := decodeBody(body, &req); err != nil || req.Node != "gw2" {
			t.Errorf("%q: %+v, %v", body, req, err)
		}
	}
	var none struct{}
	if err := decodeBody(`{"Node": 1}`, &none); err == nil || !strings.Contains(err.Error(), `unknown field "Node"`) {
		t.Errorf("drain's empty body with a field: %v", err)
	}
	for _, body := range []string{"", "{}", " { } "} {
		if err := decodeBody(body, &none); err != nil {
			t.Errorf("drain's empty body %q: %v", body, err)
		}
	}
}

// TestJSONNamesFollowEncodingJSON: the names exactFields takes are the ones
// encoding/json writes, embedded structs promoted, "-" and unexported
// fields left out.
func TestJSONNamesFollowEncodingJSON(t *testing.T) {
	type Inner struct {
		A int `json:"a"`
		B int
	}
	type outer struct {
		Inner
		C      int `json:"c,omitempty"`
		D      int `json:"-"`
		e      int
		F      int `json:",omitempty"`
		Nested Inner
	}
	got := jsonNames(reflect.TypeOf(&outer{}))
	b, err := json.Marshal(outer{e: 1})
	if err != nil {
		t.Fatal(err)
	}
	var written map[string]any
	if err := json.Unmarshal(b, &written); err != nil {
		t.Fatal(err)
	}
	written["c"], written["F"] = 0, 0 // omitted when empty, names all the same
	if len(got) != len(written) {
		t.Errorf("names %v, encoding/json writes %s", got, b)
	}
	for n := range written {
		if !got[n] {
			t.Errorf("%q written by encoding/json, not among the names %v", n, got)
		}
	}
}

// FuzzDecodeRequest: whatever the body, decode returns a value or an error
// (never a panic, never an allocation the body does not justify), and a
// body it takes names node exactly, at most once, and nothing else.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"node": "gw2"}`, `{"Node": "gw2"}`, `{"node": "gw2", "node": "gw3"}`, `{}`, ``, `[]`, `{"node": {"x": [1, 2]}}`, `{"node": "gw2"}{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var (
			req NodeRequest
			err error
		)
		allocguard.Check(t, "decode", len(body), func() { err = decodeBody(string(body), &req) })
		if err != nil {
			if !strings.HasPrefix(err.Error(), "decoding request body: ") && !strings.HasPrefix(err.Error(), "request body") {
				t.Fatalf("error does not say what it was decoding: %v", err)
			}
			return
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			t.Fatalf("took a body that is not an object: %q", body)
		}
		count := 0
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				t.Fatalf("took a body that does not parse: %q: %v", body, err)
			}
			if tok != "node" {
				t.Fatalf("took a body naming %q: %q", tok, body)
			}
			count++
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				t.Fatalf("took a body that does not parse: %q: %v", body, err)
			}
		}
		if count > 1 {
			t.Fatalf("took a body naming node %d times: %q", count, body)
		}
	})
}
