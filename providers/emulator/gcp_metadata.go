package emulator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// MetadataServer starts a GCE metadata server (plain HTTP on loopback, as
// http://metadata.google.internal is) that answers as the seeded instance
// project/zone/instance, so each in-process node has its own identity. It
// serves instance/{id,name,hostname,zone,network-interfaces/0/ip} and
// project/{project-id,numeric-project-id} under /computeMetadata/v1/, and
// refuses requests without the Metadata-Flavor: Google header as GCE does.
// The returned URL is the base to point a metadata client at; stop closes
// the listener and is safe to call twice.
func (f *GCP) MetadataServer(project, zone, instance string) (url string, stop func() error, err error) {
	f.mu.Lock()
	_, ok := f.instances[project+"/"+zone+"/"+instance]
	f.mu.Unlock()
	if !ok {
		return "", nil, fmt.Errorf("starting a metadata server for projects/%s/zones/%s/instances/%s: no such instance", project, zone, instance)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listening for the metadata server of %s: %w", instance, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /computeMetadata/v1/{path...}", func(w http.ResponseWriter, r *http.Request) {
		f.serveMetadata(w, r, project, zone, instance)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.e.log.Error("gce metadata server stopped", "instance", instance, "err", err)
		}
	}()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if stopErr = srv.Shutdown(ctx); stopErr != nil {
				stopErr = srv.Close()
			}
			<-done
		})
		return stopErr
	}
	return "http://" + ln.Addr().String(), stop, nil
}

func (f *GCP) serveMetadata(w http.ResponseWriter, r *http.Request, project, zone, name string) {
	w.Header().Set("Metadata-Flavor", "Google")
	if r.Header.Get("Metadata-Flavor") != "Google" {
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte("Missing Metadata-Flavor:Google header.\n"))
		return
	}
	f.mu.Lock()
	in := f.instances[project+"/"+zone+"/"+name]
	var val string
	found := in != nil
	if found {
		switch strings.TrimSuffix(r.PathValue("path"), "/") {
		case "instance/id":
			val = fmt.Sprint(in.id)
		case "instance/name":
			val = in.name
		case "instance/hostname":
			val = in.name + "." + in.zone + ".c." + in.project + ".internal"
		case "instance/zone":
			val = "projects/" + fmt.Sprint(projectNumber(in.project)) + "/zones/" + in.zone
		case "instance/network-interfaces/0/ip":
			val = in.nics[0].ip
		case "project/project-id":
			val = in.project
		case "project/numeric-project-id":
			val = fmt.Sprint(projectNumber(in.project))
		default:
			found = false
		}
	}
	f.mu.Unlock()
	if !found {
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("Not Found\n"))
		return
	}
	w.Header().Set("Content-Type", "application/text")
	_, _ = w.Write([]byte(val))
}

// projectNumber derives a stable fake project number from the project ID.
func projectNumber(project string) uint64 {
	var h uint64 = 1469598103934665603
	for i := 0; i < len(project); i++ {
		h = (h ^ uint64(project[i])) * 1099511628211
	}
	return 100000000000 + h%900000000000
}
