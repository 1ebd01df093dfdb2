package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/internal/rtsched"
)

// Realtime scheduling is opt-in (docs/architecture.md, "Stable under
// load"): the default asks for nothing.
func TestSchedulingDefaultsLeaveSchedulingAlone(t *testing.T) {
	c, err := Resolve(validFile())
	if err != nil {
		t.Fatal(err)
	}
	want := rtsched.Request{Policy: rtsched.RR}
	if c.Scheduling != want {
		t.Errorf("default scheduling = %+v, want %+v", c.Scheduling, want)
	}
}

func TestSchedulingBlockInHCLAndYAML(t *testing.T) {
	head := "node_id = \"gw1\"\nadvertise_addr = \"192.0.2.1:7946\"\ncluster_key = \"" + strings.Repeat("0f", 32) + "\"\n"
	yhead := "node_id: gw1\nadvertise_addr: 192.0.2.1:7946\ncluster_key: " + strings.Repeat("0f", 32) + "\n"
	for _, c := range []struct {
		name, hcl, yaml string
		want            rtsched.Request
	}{
		{"fifo 30 unlocked", "scheduling {\n  realtime_priority = 30\n  policy = \"fifo\"\n  lock_memory = false\n}\n",
			"scheduling:\n  realtime_priority: 30\n  policy: fifo\n  lock_memory: false\n",
			rtsched.Request{Policy: rtsched.FIFO, Priority: 30}},
		// Each key alone; the others keep their defaults (off).
		{"only priority", "scheduling {\n  realtime_priority = 10\n}\n", "scheduling:\n  realtime_priority: 10\n",
			rtsched.Request{Policy: rtsched.RR, Priority: 10}},
		{"only memory", "scheduling {\n  lock_memory = true\n}\n", "scheduling:\n  lock_memory: true\n",
			rtsched.Request{Policy: rtsched.RR, LockMemory: true}},
	} {
		var got []rtsched.Request
		for _, src := range []struct{ name, text string }{{"x.hcl", head + c.hcl}, {"x.yaml", yhead + c.yaml}} {
			f, err := Parse(src.name, []byte(src.text), "")
			if err != nil {
				t.Fatalf("%s %s: %v", c.name, src.name, err)
			}
			out := Defaults()
			Merge(&out, f)
			r, err := Resolve(out)
			if err != nil {
				t.Fatalf("%s %s: %v", c.name, src.name, err)
			}
			got = append(got, r.Scheduling)
		}
		if got[0] != c.want || !reflect.DeepEqual(got[0], got[1]) {
			t.Errorf("%s: hcl %+v, yaml %+v, want %+v", c.name, got[0], got[1], c.want)
		}
	}
}

func TestSchedulingValidationNamesTheKey(t *testing.T) {
	for _, c := range []struct {
		block SchedulingBlock
		key   string
	}{
		{SchedulingBlock{RealtimePriority: ptr(100)}, "scheduling.realtime_priority"},
		{SchedulingBlock{RealtimePriority: ptr(-1)}, "scheduling.realtime_priority"},
		{SchedulingBlock{Policy: "other"}, "scheduling.policy"},
		{SchedulingBlock{Policy: "RR"}, "scheduling.policy"},
		{SchedulingBlock{ProcsPerCPU: ptr(0)}, "scheduling.procs_per_cpu"},
		{SchedulingBlock{ProcsPerCPU: ptr(65)}, "scheduling.procs_per_cpu"},
	} {
		f := validFile()
		f.Scheduling = &c.block
		_, err := Resolve(f)
		if err == nil || !strings.Contains(err.Error(), c.key+":") {
			t.Errorf("%+v: err = %v, want one naming %s", c.block, err, c.key)
		}
	}
	for _, p := range []int{0, 1, 99} {
		f := validFile()
		f.Scheduling = &SchedulingBlock{RealtimePriority: ptr(p)}
		if _, err := Resolve(f); err != nil {
			t.Errorf("realtime_priority %d: %v", p, err)
		}
	}
	f := validFile()
	f.Scheduling = &SchedulingBlock{ProcsPerCPU: ptr(2)}
	if c, err := Resolve(f); err != nil || c.ProcsPerCPU != 2 {
		t.Errorf("procs_per_cpu 2: %+v, %v", c, err)
	}
	if c, err := Resolve(validFile()); err != nil || c.ProcsPerCPU != DefaultProcsPerCPU {
		t.Errorf("procs_per_cpu by default: %v, %v; want %d", c.ProcsPerCPU, err, DefaultProcsPerCPU)
	}
}

func TestSchedulingUnknownKeyRejected(t *testing.T) {
	for name, src := range map[string]string{
		"x.hcl":  "scheduling {\n  rt_priority = 10\n}\n",
		"x.yaml": "scheduling:\n  rt_priority: 10\n",
	} {
		if _, err := Parse(name, []byte(src), ""); err == nil || !strings.Contains(err.Error(), "rt_priority") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}
