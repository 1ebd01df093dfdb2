package raftstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// sealVersion is the first byte of every sealed blob.
const sealVersion = 1

// KeySize is the size of a cluster key: AES-256.
const KeySize = 32

// ErrSealKey means a blob was sealed with another cluster key.
var ErrSealKey = errors.New("sealed with a different cluster key")

// Sealer encrypts SA payloads with the cluster key (AES-256-GCM) before they
// enter the Raft log, so the log and snapshots hold ciphertext only.
//
// A sealed blob is version(1) | key id(4) | nonce(12) | ciphertext+tag. The
// key id (the first 4 bytes of SHA-256 of the key) lets a node with the
// wrong key say so instead of reporting a generic authentication failure.
// The SA ID is the additional data, so a blob cannot be replayed under
// another SA's ID.
type Sealer struct {
	aead  cipher.AEAD
	keyID uint32
}

// NewSealer returns a sealer for a 32-byte cluster key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("cluster key is %d bytes, want %d (AES-256)", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("creating AES cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("creating GCM: %w", err)
	}
	sum := sha256.Sum256(key)
	return &Sealer{aead: aead, keyID: binary.BigEndian.Uint32(sum[:4])}, nil
}

const sealHeader = 1 + 4 + 12

// Seal encrypts plaintext bound to id.
func (s *Sealer) Seal(id string, plaintext []byte) ([]byte, error) {
	out := make([]byte, sealHeader, sealHeader+len(plaintext)+s.aead.Overhead())
	out[0] = sealVersion
	binary.BigEndian.PutUint32(out[1:5], s.keyID)
	if _, err := rand.Read(out[5:sealHeader]); err != nil {
		return nil, fmt.Errorf("reading a nonce: %w", err)
	}
	return s.aead.Seal(out, out[5:sealHeader], plaintext, []byte(id)), nil
}

// Open decrypts a blob sealed for id.
func (s *Sealer) Open(id string, blob []byte) ([]byte, error) {
	if len(blob) < sealHeader+s.aead.Overhead() {
		return nil, fmt.Errorf("opening sealed SA %s: blob of %d bytes is too short", id, len(blob))
	}
	if blob[0] != sealVersion {
		return nil, fmt.Errorf("opening sealed SA %s: version %d, want %d", id, blob[0], sealVersion)
	}
	if kid := binary.BigEndian.Uint32(blob[1:5]); kid != s.keyID {
		return nil, fmt.Errorf("opening sealed SA %s: key id %08x, ours %08x: %w", id, kid, s.keyID, ErrSealKey)
	}
	pt, err := s.aead.Open(nil, blob[5:sealHeader], blob[sealHeader:], []byte(id))
	if err != nil {
		return nil, fmt.Errorf("opening sealed SA %s: %w", id, err)
	}
	return pt, nil
}
