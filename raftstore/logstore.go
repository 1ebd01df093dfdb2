package raftstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// The Raft log and stable store is hashicorp/raft-wal: append-only segment
// files. raft-boltdb rewrote B+tree pages and re-encoded every entry on
// each append; an sa-batch entry is hundreds of kilobytes, and the
// benchmark showed it: committing 1,000 SAs on a single node took 19 ms
// with bolt and a three-node cluster's follower lag at 10,000 upserts/s
// was 16 ms at the median and 67 ms at p99; with the WAL 4–5 ms and
// 17–30 ms (internal/perf, docs/performance.md).

// walDir is the log's directory inside the data directory.
const walDir = "wal"

// segmentSize is the size of a log segment file, preallocated when it is
// created. raft-wal's default is 64 MiB; a node writes a segment in a few
// seconds even in a storm (~20 MB/s), so a smaller one costs only more
// frequent rotations, and it keeps a node's log small on a small disk or a
// lab guest's tmpfs (three nodes with 64 MiB each filled the lab's).
const segmentSize = 16 << 20

// openLogStore opens (or creates) the log in dataDir. Every file it holds
// is owner-only like the rest of the data directory (the entries are
// sealed, but the term and vote are nobody else's business either).
// noSync skips fsync (tests and benchmarks only).
func openLogStore(dataDir string, noSync bool, log hclog.Logger) (*logStore, error) {
	dir := filepath.Join(dataDir, walDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the raft log directory: %w", err)
	}
	vfs := &privateFS{VFS: walfs.New(), noSync: noSync}
	// The WAL never closes the meta store it opens itself, whose file lock
	// then blocks the next Open in the same process (a restarted node in
	// the cluster tests) forever: this one is closed with the log.
	meta := &metadb.BoltMetaDB{}
	w, err := raftwal.Open(dir, raftwal.WithSegmentFiler(segment.NewFiler(dir, vfs)), raftwal.WithMetaStore(meta),
		raftwal.WithSegmentSize(segmentSize), raftwal.WithLogger(log.Named("wal")))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("opening the raft log in %s: %w", dir, err), meta.Close())
	}
	l := &logStore{WAL: w, meta: meta}
	// The WAL's own bolt index is created 0644.
	if err := os.Chmod(filepath.Join(dir, metadb.FileName), 0o600); err != nil {
		return nil, errors.Join(fmt.Errorf("securing the raft log index: %w", err), l.Close())
	}
	return l, nil
}

// logStore is the WAL with one fix: after a head truncation (compaction
// after a snapshot) the WAL still serves the truncated entries from its
// unsealed tail segment, so a leader would replay the whole log to a new
// follower instead of sending it the snapshot. Entries below the first
// index are reported missing, as raft expects.
// It also closes the meta store with the log.
type logStore struct {
	*raftwal.WAL
	meta *metadb.BoltMetaDB
}

func (l *logStore) Close() error {
	return errors.Join(l.WAL.Close(), l.meta.Close())
}

func (l *logStore) GetLog(index uint64, out *raft.Log) error {
	first, err := l.FirstIndex()
	if err != nil {
		return err
	}
	if index < first {
		return raft.ErrLogNotFound
	}
	return l.WAL.GetLog(index, out)
}

// privateFS is raft-wal's file system with owner-only segment files and,
// for tests, no fsync. The directory is 0700 before any file is created,
// so the moment between creation and chmod exposes nothing.
type privateFS struct {
	types.VFS
	noSync bool
}

func (p *privateFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := p.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Join(dir, name), 0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("securing raft log segment %s: %w", name, err)
	}
	return p.wrap(f), nil
}

func (p *privateFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := p.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return p.wrap(f), nil
}

func (p *privateFS) wrap(f types.WritableFile) types.WritableFile {
	if p.noSync {
		return noSyncFile{f}
	}
	return f
}

type noSyncFile struct{ types.WritableFile }

func (noSyncFile) Sync() error { return nil }
