package emulator

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// imdsMaxTTL is IMDSv2's longest token lifetime (six hours).
const imdsMaxTTL = 21600

// AWSMetadataServer is one instance's IMDSv2 endpoint: plain HTTP on its own
// loopback listener, because the metadata service identifies the caller by
// where the call comes from and in-process nodes must differ. It answers
// only token-authenticated calls (IMDSv2, no v1 fallback) and reads the
// model live, so local-ipv4s shows a reassigned VIP at once.
type AWSMetadataServer struct {
	f        *AWS
	instance string
	ln       net.Listener
	srv      *http.Server
	done     chan struct{}
	closer   sync.Once

	mu     sync.Mutex // guards the following fields
	tokens map[string]time.Time
}

// MetadataServer starts the IMDSv2 endpoint of an instance. The caller
// closes it.
func (f *AWS) MetadataServer(instanceID string) (*AWSMetadataServer, error) {
	f.mu.Lock()
	_, ok := f.instances[instanceID]
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("starting the metadata server: no instance %s", instanceID)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting the metadata server of %s: %w", instanceID, err)
	}
	return f.MetadataServerOn(instanceID, ln)
}

// MetadataServerOn serves an instance's IMDSv2 endpoint on ln, which it
// owns from then on: the lab listens on 169.254.169.254:80 inside the
// instance's own network namespace, where the SDK looks by default.
func (f *AWS) MetadataServerOn(instanceID string, ln net.Listener) (*AWSMetadataServer, error) {
	f.mu.Lock()
	_, ok := f.instances[instanceID]
	f.mu.Unlock()
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("starting the metadata server: no instance %s", instanceID)
	}
	m := &AWSMetadataServer{f: f, instance: instanceID, ln: ln, done: make(chan struct{}), tokens: make(map[string]time.Time)}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /latest/api/token", m.token)
	mux.HandleFunc("GET /latest/meta-data/{path...}", m.metadata)
	mux.HandleFunc("GET /latest/dynamic/instance-identity/document", m.identity)
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.e.log.Error("aws metadata server stopped", "instance", instanceID, "err", err)
		}
	}()
	return m, nil
}

// URL is the endpoint to give the IMDS client, e.g. "http://127.0.0.1:4321".
func (m *AWSMetadataServer) URL() string { return "http://" + m.ln.Addr().String() }

// Close stops the server; it is safe to call twice.
func (m *AWSMetadataServer) Close() error {
	var err error
	m.closer.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err = m.srv.Shutdown(ctx); err != nil {
			err = m.srv.Close()
		}
		<-m.done
	})
	return err
}

func (m *AWSMetadataServer) token(w http.ResponseWriter, r *http.Request) {
	// IMDSv2 refuses token requests that went through a proxy.
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
	if err != nil || ttl < 1 || ttl > imdsMaxTTL {
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	var b [32]byte
	_, _ = rand.Read(b[:])
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	now := time.Now()
	m.mu.Lock()
	for t, exp := range m.tokens {
		if now.After(exp) {
			delete(m.tokens, t)
		}
	}
	m.tokens[tok] = now.Add(time.Duration(ttl) * time.Second)
	m.mu.Unlock()
	w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", strconv.Itoa(ttl))
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, tok)
}

// authorized checks the session token; without one IMDSv2 answers 401.
func (m *AWSMetadataServer) authorized(w http.ResponseWriter, r *http.Request) bool {
	tok := r.Header.Get("X-Aws-Ec2-Metadata-Token")
	m.mu.Lock()
	exp, ok := m.tokens[tok]
	m.mu.Unlock()
	if tok == "" || !ok || time.Now().After(exp) {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return false
	}
	return true
}

func (m *AWSMetadataServer) metadata(w http.ResponseWriter, r *http.Request) {
	if !m.authorized(w, r) {
		return
	}
	path := strings.TrimSuffix(r.PathValue("path"), "/")
	val, ok := m.lookup(path)
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, val)
}

// lookup answers one meta-data path from the live model.
func (m *AWSMetadataServer) lookup(path string) (string, bool) {
	f := m.f
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.instances[m.instance]
	if !ok {
		return "", false
	}
	n := f.enis[in.eni]
	switch path {
	case "instance-id":
		return in.id, true
	case "mac":
		return n.mac, true
	case "local-ipv4":
		return n.primary.String(), true
	case "placement/region":
		return in.region, true
	case "placement/availability-zone":
		return in.az, true
	case "network/interfaces/macs":
		return n.mac + "/", true
	}
	rest, ok := strings.CutPrefix(path, "network/interfaces/macs/"+n.mac+"/")
	if !ok {
		return "", false
	}
	switch rest {
	case "interface-id":
		return n.id, true
	case "local-ipv4s":
		ips := []string{n.primary.String()}
		for _, s := range n.secondary {
			ips = append(ips, s.String())
		}
		return strings.Join(ips, "\n"), true
	case "subnet-id":
		return n.subnetID, true
	case "vpc-id":
		return n.vpcID, true
	}
	return "", false
}

func (m *AWSMetadataServer) identity(w http.ResponseWriter, r *http.Request) {
	if !m.authorized(w, r) {
		return
	}
	f := m.f
	f.mu.Lock()
	in, ok := f.instances[m.instance]
	var doc map[string]any
	if ok {
		doc = map[string]any{
			"accountId":        ec2AccountID,
			"architecture":     "x86_64",
			"availabilityZone": in.az,
			"imageId":          "ami-0handoff0emulated",
			"instanceId":       in.id,
			"instanceType":     "c6in.large",
			"pendingTime":      "2024-01-01T00:00:00Z",
			"privateIp":        f.enis[in.eni].primary.String(),
			"region":           in.region,
			"version":          "2017-09-30",
		}
	}
	f.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(doc)
}
