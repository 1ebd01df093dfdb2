package perf

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Latencies is a set of durations measured one per event.
type Latencies []time.Duration

// Quantile returns the q-quantile (0 ≤ q ≤ 1) by the nearest-rank method,
// or 0 for an empty set.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Max returns the largest duration, or 0.
func (l Latencies) Max() time.Duration {
	if len(l) == 0 {
		return 0
	}
	return slices.Max(l)
}

// MS converts a duration to float milliseconds rounded to 0.01 ms.
func MS(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*100) / 100 }

// Table prints aligned rows of (figure, value, note).
type Table struct {
	rows [][3]string
}

// Add appends a row; value is formatted with %v, floats with 2 decimals.
func (t *Table) Add(name string, value any, note string) {
	var v string
	switch x := value.(type) {
	case float64:
		v = fmt.Sprintf("%.2f", x)
	case nil:
		v = "-"
	default:
		v = fmt.Sprint(x)
	}
	t.rows = append(t.rows, [3]string{name, v, note})
}

// Section appends a heading row.
func (t *Table) Section(title string) { t.rows = append(t.rows, [3]string{"", "", title}) }

// Write prints the table.
func (t *Table) Write(w io.Writer) error {
	wn, wv := 0, 0
	for _, r := range t.rows {
		wn, wv = max(wn, len(r[0])), max(wv, len(r[1]))
	}
	var b strings.Builder
	for _, r := range t.rows {
		if r[0] == "" && r[1] == "" {
			fmt.Fprintf(&b, "\n== %s\n", r[2])
			continue
		}
		fmt.Fprintf(&b, "  %-*s  %*s  %s\n", wn, r[0], wv, r[1], r[2])
	}
	_, err := io.WriteString(w, b.String())
	return err
}
