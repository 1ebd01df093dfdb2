package agent

import (
	"testing"
	"time"
)

func TestStaggerWithinHeartbeat(t *testing.T) {
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	for _, c := range []struct {
		stagger, after, hb time.Duration
		voters             int
		want               time.Duration
	}{
		{ms(35), ms(280), ms(400), 2, ms(35)},  // room enough
		{ms(35), ms(280), ms(300), 2, ms(19)},  // the last must start under 300 ms
		{ms(35), ms(280), ms(300), 3, ms(9.5)}, // 19 ms shared by two steps
		{ms(12), ms(100), ms(150), 3, ms(12)},
		{ms(35), ms(280), ms(400), 1, ms(35)}, // alone: no order to keep
		{ms(35), ms(300), ms(300), 2, 0},      // no room at all
	} {
		if got := staggerWithin(c.stagger, c.after, c.hb, c.voters); got != c.want {
			t.Errorf("staggerWithin(%v, %v, %v, %d) = %v, want %v", c.stagger, c.after, c.hb, c.voters, got, c.want)
		}
	}
}
