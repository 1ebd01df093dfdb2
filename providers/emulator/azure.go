package emulator

import "net/http"

// Azure is the emulator's Azure front end and resource model.
// Placeholder until the azure provider work lands: it serves no routes yet.
type Azure struct{ e *Emulator }

func newAzure(e *Emulator) *Azure { return &Azure{e: e} }

func (f *Azure) register(mux *http.ServeMux) {}
