// Package statuspage is the agent's status page: one self-contained HTML
// page with its script and style sheet embedded in the binary (no external
// assets, no CDN). The page's own JavaScript reads /v1/status and
// /v1/history from the agent that serves it and renders members, the
// active node, health, SA counts and the failover history with per-phase
// timings, refreshing every few seconds. From beyond loopback the API wants
// a token: open the page as /#token=<token> and the script sends it.
package statuspage

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed ui
var files embed.FS

// Handler serves the page at / and its assets under /ui/.
func Handler() http.Handler {
	sub, err := fs.Sub(files, "ui")
	if err != nil {
		// The embedded tree is fixed at build time; this cannot happen.
		panic(err)
	}
	static := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		// Everything comes from this origin; the data only through fetch.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		switch r.URL.Path {
		case "/", "/index.html":
			http.ServeFileFS(w, r, sub, "index.html")
		default:
			if len(r.URL.Path) > 4 && r.URL.Path[:4] == "/ui/" {
				http.StripPrefix("/ui", static).ServeHTTP(w, r)
				return
			}
			http.NotFound(w, r)
		}
	})
}
