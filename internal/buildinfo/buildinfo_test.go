package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestRead(t *testing.T) {
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}
	for _, c := range []struct {
		name  string
		stamp string
		bi    *debug.BuildInfo
		want  Info
		str   string
	}{
		{"stamped wins", "v1.4.0", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-2026"}, Settings: vcs},
			Info{Version: "v1.4.0", Revision: "0123456789abcdef0123", Modified: true, GoVersion: "go1.26.8"}, "v1.4.0 (0123456789ab, modified) go1.26.8"},
		{"module version", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.3.2"}},
			Info{Version: "v1.3.2", GoVersion: "go1.26.8"}, "v1.3.2 go1.26.8"},
		{"devel is dev", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			Info{Version: Dev, GoVersion: "go1.26.8"}, "dev go1.26.8"},
		{"no build info", "", nil, Info{Version: Dev}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := read(c.stamp, func() (*debug.BuildInfo, bool) { return c.bi, c.bi != nil })
			if c.bi == nil {
				c.want.GoVersion = got.GoVersion // runtime.Version()
			}
			if got != c.want {
				t.Errorf("read = %+v, want %+v", got, c.want)
			}
			if c.str != "" && got.String() != c.str {
				t.Errorf("String() = %q, want %q", got.String(), c.str)
			}
		})
	}
}
