package statuspage_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/operator/statuspage"
)

func get(t *testing.T, h http.Handler, method, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestSelfContained checks that the page and everything it references come
// from the binary: no URL to another origin, and a CSP that would block one.
func TestSelfContained(t *testing.T) {
	h := statuspage.Handler()
	resp, page := get(t, h, "GET", "/")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 2 {
		t.Fatalf("page references %d assets", len(refs))
	}
	bodies := []string{page}
	for _, r := range refs {
		if !strings.HasPrefix(r[1], "/ui/") {
			t.Errorf("page references %q outside the embedded assets", r[1])
			continue
		}
		resp, body := get(t, h, "GET", r[1])
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Errorf("GET %s: %d", r[1], resp.StatusCode)
		}
		bodies = append(bodies, body)
	}
	for _, b := range bodies {
		if strings.Contains(b, "http://") || strings.Contains(b, "https://") || strings.Contains(b, "innerHTML") {
			t.Errorf("an asset names another origin or writes HTML:\n%.200s", b)
		}
	}
	if resp, _ := get(t, h, "POST", "/"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d", resp.StatusCode)
	}
	if resp, _ := get(t, h, "GET", "/nothing"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing: %d", resp.StatusCode)
	}
}
