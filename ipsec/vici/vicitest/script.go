package vicitest

import (
	"fmt"
	"strings"
)

// Step is one line-led block of a transcript.
type Step struct {
	// Kind is '>' (expected command), '<' (reply or streamed event) or
	// '!' (pushed event, or the actions restart and stop).
	Kind byte
	// Name is the command, the event name, "response", "restart" or
	// "stop".
	Name string
	// Body is the message; nil when the step has none.
	Body *Msg
	Line int
}

// ParseTranscript parses the text of a transcript.
func ParseTranscript(text string) ([]Step, error) {
	lines := strings.Split(text, "\n")
	var steps []Step
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if line[0] != '>' && line[0] != '<' && line[0] != '!' {
			return nil, fmt.Errorf("line %d: want a step starting with >, < or !, got %q", i+1, line)
		}
		st := Step{Kind: line[0], Line: i + 1}
		head := strings.TrimSpace(line[1:])
		switch {
		case strings.HasSuffix(head, "{}"):
			st.Name = strings.TrimSpace(strings.TrimSuffix(head, "{}"))
			st.Body = &Msg{}
		case strings.HasSuffix(head, "{"):
			st.Name = strings.TrimSpace(strings.TrimSuffix(head, "{"))
			body, next, err := parseBody(lines, i+1)
			if err != nil {
				return nil, err
			}
			st.Body = body
			i = next
		default:
			st.Name = head
		}
		if st.Name == "" {
			return nil, fmt.Errorf("line %d: step without a name", i+1)
		}
		steps = append(steps, st)
	}
	return steps, nil
}

// parseBody reads message lines from lines[start:] up to the closing "}"
// of the step and returns the index of that line.
func parseBody(lines []string, start int) (*Msg, int, error) {
	root := &Msg{}
	stack := []*Msg{root}
	var list *Item
	for i := start; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" {
			continue
		}
		cur := stack[len(stack)-1]
		switch {
		case list != nil:
			if line == "]" {
				cur.Items = append(cur.Items, *list)
				list = nil
				continue
			}
			list.List = append(list.List, line)
		case line == "}":
			if len(stack) == 1 {
				return root, i, nil
			}
			stack = stack[:len(stack)-1]
		case strings.HasSuffix(line, " {") || line == "{":
			key := strings.TrimSpace(strings.TrimSuffix(line, "{"))
			sub := &Msg{}
			cur.Items = append(cur.Items, Item{Key: key, Section: sub})
			stack = append(stack, sub)
		case strings.HasSuffix(line, " ["):
			// swanctl writes "key = [", older layouts "key [".
			key := strings.TrimSpace(strings.TrimSuffix(line, "["))
			key = strings.TrimSpace(strings.TrimSuffix(key, "="))
			list = &Item{Key: key, IsList: true}
		default:
			k, v, ok := strings.Cut(line, " =")
			if !ok {
				return nil, 0, fmt.Errorf("line %d: want key = value, got %q", i+1, line)
			}
			cur.Items = append(cur.Items, Item{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)})
		}
	}
	return nil, 0, fmt.Errorf("line %d: message not closed", start)
}

// Format renders a step in transcript syntax.
func (s Step) Format() string {
	switch {
	case s.Body == nil:
		return fmt.Sprintf("%c %s\n", s.Kind, s.Name)
	case len(s.Body.Items) == 0:
		return fmt.Sprintf("%c %s {}\n", s.Kind, s.Name)
	default:
		return fmt.Sprintf("%c %s {\n%s}\n", s.Kind, s.Name, s.Body.Format("  "))
	}
}
