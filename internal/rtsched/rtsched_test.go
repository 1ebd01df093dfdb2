package rtsched

import (
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	for s, want := range map[string]Policy{"rr": RR, "fifo": FIFO} {
		if p, err := ParsePolicy(s); err != nil || p != want {
			t.Errorf("ParsePolicy(%q) = %v, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "RR", "other", "SCHED_RR", "deadline"} {
		if _, err := ParsePolicy(s); err == nil || !strings.Contains(err.Error(), "rr or fifo") {
			t.Errorf("ParsePolicy(%q): err = %v", s, err)
		}
	}
}

func TestRequestValidateAndString(t *testing.T) {
	for _, c := range []struct {
		req  Request
		ok   bool
		says string
	}{
		{Request{Policy: RR, Priority: 10, LockMemory: true}, true, "SCHED_RR priority 10 on every thread, memory locked"},
		{Request{Policy: FIFO, Priority: 99}, true, "SCHED_FIFO priority 99 on every thread"},
		{Request{LockMemory: true}, true, "memory locked"},
		{Request{Policy: RR}, true, "nothing"},
		{Request{Policy: RR, Priority: 100}, false, ""},
		{Request{Policy: RR, Priority: -1}, false, ""},
		{Request{Policy: Batch, Priority: 1}, false, ""},
	} {
		err := c.req.Validate()
		if (err == nil) != c.ok {
			t.Errorf("%+v: Validate() = %v", c.req, err)
		}
		if c.ok && c.req.String() != c.says {
			t.Errorf("%+v says %q, want %q", c.req, c.req.String(), c.says)
		}
	}
	if !(Request{Policy: RR}).Empty() || (Request{LockMemory: true}).Empty() {
		t.Error("Empty")
	}
}

func TestSummarize(t *testing.T) {
	rr := Thread{Policy: RR, Priority: 10}
	other := Thread{}
	for _, c := range []struct {
		threads []Thread
		want    string
	}{
		{nil, "no threads"},
		{[]Thread{other}, "SCHED_OTHER on the only thread"},
		{[]Thread{rr, rr, rr}, "SCHED_RR priority 10 on all 3 threads"},
		{[]Thread{other, rr, rr, {Policy: FIFO, Priority: 5}}, "SCHED_RR priority 10 on 2 of 4 threads, SCHED_OTHER on 1, SCHED_FIFO priority 5 on 1"},
		{[]Thread{{Policy: 7}}, "SCHED_7 on the only thread"},
	} {
		if got := Summarize(c.threads); got != c.want {
			t.Errorf("Summarize(%v) = %q, want %q", c.threads, got, c.want)
		}
	}
}

func TestReportComplete(t *testing.T) {
	rr := Thread{Policy: RR, Priority: 10}
	req := Request{Policy: RR, Priority: 10, LockMemory: true}
	for _, c := range []struct {
		rep  Report
		want bool
	}{
		{Report{Requested: req, Threads: []Thread{rr, rr}, MemoryLocked: true}, true},
		{Report{Requested: req, Threads: []Thread{rr, {}}, MemoryLocked: true}, false},
		{Report{Requested: req, Threads: []Thread{rr}}, false},
		{Report{Requested: req, MemoryLocked: true}, false}, // read-back failed
		{Report{Requested: Request{LockMemory: true}, Threads: []Thread{{}}, MemoryLocked: true}, true},
	} {
		if got := c.rep.Complete(); got != c.want {
			t.Errorf("%+v: Complete() = %v", c.rep, got)
		}
	}
}
