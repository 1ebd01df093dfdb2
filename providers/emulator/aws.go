package emulator

import "net/http"

// AWS is the emulator's AWS front end and resource model.
// Placeholder until the aws provider work lands: it serves no routes yet.
type AWS struct{ e *Emulator }

func newAWS(e *Emulator) *AWS { return &AWS{e: e} }

func (f *AWS) register(mux *http.ServeMux) {}
