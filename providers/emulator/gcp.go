package emulator

import "net/http"

// GCP is the emulator's GCP front end and resource model.
// Placeholder until the gcp provider work lands: it serves no routes yet.
type GCP struct{ e *Emulator }

func newGCP(e *Emulator) *GCP { return &GCP{e: e} }

func (f *GCP) register(mux *http.ServeMux) {}
