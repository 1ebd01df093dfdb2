package linux

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// record is what a node knows about one VIP: the highest claim it has
// seen (its own or one that made it yield) and whether it holds the VIP.
type record struct {
	Node string `json:"node"`
	Term uint64 `json:"term"`
	Held bool   `json:"held"`
}

// stateFile keeps the records next to the addresses they describe, so an
// agent that restarts still knows the term it holds a VIP under and never
// accepts a lower one.
type stateFile struct{ path string }

func (s stateFile) load() (map[string]record, error) {
	recs := map[string]record{}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return recs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the VIP state %s: %w", s.path, err)
	}
	if err := json.Unmarshal(b, &recs); err != nil {
		return nil, fmt.Errorf("decoding the VIP state %s: %w", s.path, err)
	}
	return recs, nil
}

// save replaces the file atomically (write, sync, rename).
func (s stateFile) save(recs map[string]record) error {
	b, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the VIP state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("creating the VIP state directory: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".vips-*")
	if err != nil {
		return fmt.Errorf("writing the VIP state: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the VIP state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing the VIP state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the VIP state: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("replacing the VIP state %s: %w", s.path, err)
	}
	return nil
}
