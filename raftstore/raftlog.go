package raftstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// raftLogger gives hashicorp/raft (and raft-wal, the snapshot store and
// the transport, which all take an hclog.Logger) a logger that writes to
// slog with their key/value pairs as attributes. Formatting them into one
// line and parsing the level back out of it, as an io.Writer under hclog
// must, flattened every field into msg: a JSON log then had
// `"msg":"[WARN]  raft: heartbeat timeout reached: last-leader-addr=… "`
// and nothing to filter on.
type raftLogger struct {
	log  *slog.Logger
	name string
	// level is shared with every logger derived through With and Named, as
	// hclog's own loggers share theirs.
	level *atomic.Int32
	args  []any
}

func newRaftLogger(log *slog.Logger, level string) *raftLogger {
	l := &raftLogger{log: log.With("component", "raft"), name: "raft", level: new(atomic.Int32)}
	l.level.Store(int32(hclog.LevelFromString(orDefault(level, "warn"))))
	return l
}

var _ hclog.Logger = (*raftLogger)(nil)

// slogLevel maps hclog's levels onto slog's; trace sits below debug.
func slogLevel(l hclog.Level) slog.Level {
	switch {
	case l <= hclog.Trace:
		return slog.LevelDebug - 4
	case l == hclog.Debug:
		return slog.LevelDebug
	case l == hclog.Info:
		return slog.LevelInfo
	case l == hclog.Warn:
		return slog.LevelWarn
	}
	return slog.LevelError
}

func (l *raftLogger) enabled(lv hclog.Level) bool {
	return lv >= hclog.Level(l.level.Load())
}

func (l *raftLogger) Log(lv hclog.Level, msg string, args ...any) {
	if lv == hclog.NoLevel {
		lv = hclog.Info
	}
	if !l.enabled(lv) {
		return
	}
	attrs := make([]any, 0, len(args)+2)
	if l.name != "raft" {
		attrs = append(attrs, "logger", l.name)
	}
	attrs = append(attrs, plainArgs(args)...)
	l.log.Log(context.Background(), slogLevel(lv), msg, attrs...)
}

// plainArgs turns hclog's value wrappers into what slog prints well.
func plainArgs(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case hclog.Format:
			if len(v) > 0 {
				if f, ok := v[0].(string); ok {
					a = fmt.Sprintf(f, v[1:]...)
				}
			}
		case error:
			a = v.Error()
		}
		out[i] = a
	}
	return out
}

func (l *raftLogger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *raftLogger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *raftLogger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *raftLogger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *raftLogger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l *raftLogger) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *raftLogger) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *raftLogger) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *raftLogger) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *raftLogger) IsError() bool { return l.enabled(hclog.Error) }

func (l *raftLogger) ImpliedArgs() []any { return l.args }

func (l *raftLogger) With(args ...any) hclog.Logger {
	c := *l
	c.args = append(append([]any(nil), l.args...), args...)
	c.log = l.log.With(plainArgs(args)...)
	return &c
}

func (l *raftLogger) Name() string { return l.name }

func (l *raftLogger) Named(name string) hclog.Logger {
	c := *l
	c.name = l.name + "." + name
	return &c
}

func (l *raftLogger) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

func (l *raftLogger) SetLevel(lv hclog.Level) { l.level.Store(int32(lv)) }
func (l *raftLogger) GetLevel() hclog.Level   { return hclog.Level(l.level.Load()) }

func (l *raftLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(opts), "", 0)
}

// StandardWriter serves libraries that want a *log.Logger: each line is one
// record, at the level it names ("[WARN] …") when asked to infer it.
func (l *raftLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &lineWriter{l: l, opts: *opts}
}

type lineWriter struct {
	l    *raftLogger
	opts hclog.StandardLoggerOptions
}

func (w *lineWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	lv := hclog.Info
	if w.opts.ForceLevel != hclog.NoLevel {
		lv = w.opts.ForceLevel
	} else if w.opts.InferLevels {
		for _, c := range []struct {
			tag string
			lv  hclog.Level
		}{{"[ERROR]", hclog.Error}, {"[ERR]", hclog.Error}, {"[WARN]", hclog.Warn}, {"[INFO]", hclog.Info},
			{"[DEBUG]", hclog.Debug}, {"[TRACE]", hclog.Trace}} {
			if i := bytes.Index(line, []byte(c.tag)); i >= 0 {
				lv = c.lv
				line = bytes.TrimSpace(append(line[:i:i], line[i+len(c.tag):]...))
				break
			}
		}
	}
	w.l.Log(lv, string(line))
	return len(p), nil
}
