package topo

import "testing"

func TestStalePID(t *testing.T) {
	for name, want := range map[string]int{
		"tt123-gw1":    123,
		"tt123-net":    123,
		"tt-gw1":       0,
		"ttx12-gw1":    0,
		"ho-123-gw1":   0,
		"tt123":        0,
		"other123-gw1": 0,
	} {
		pid, ok := stalePID(name, "tt")
		if (want != 0) != ok || pid != want {
			t.Errorf("stalePID(%q) = %d %v, want %d", name, pid, ok, want)
		}
	}
}
