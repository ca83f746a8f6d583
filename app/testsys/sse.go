package testsys

import (
	"bufio"
	"errors"
	"io"
	"strings"
)

// Event is one Server-Sent Event.
type Event struct {
	ID, Name, Data string
}

// EventReader reads Server-Sent Events from a response body. Bound it with
// the request's context: Next blocks until an event or the end.
type EventReader struct {
	scanner  *bufio.Scanner
	Comments int // ":" lines seen (keep-alives)
}

func NewEventReader(r io.Reader) *EventReader {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	return &EventReader{scanner: s}
}

// Next returns the next event: io.EOF when the stream ended cleanly between
// events, io.ErrUnexpectedEOF when it ended inside one.
func (er *EventReader) Next() (Event, error) {
	var ev Event
	var data []string
	started := false
	for er.scanner.Scan() {
		line := er.scanner.Text()
		if line == "" {
			if started {
				ev.Data = strings.Join(data, "\n")
				return ev, nil
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			er.Comments++
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		started = true
		switch field {
		case "id":
			ev.ID = value
		case "event":
			ev.Name = value
		case "data":
			data = append(data, value)
		}
	}
	if err := er.scanner.Err(); err != nil {
		return Event{}, err
	}
	if started {
		return Event{}, io.ErrUnexpectedEOF
	}
	return Event{}, io.EOF
}

// All reads events until the stream ends cleanly.
func (er *EventReader) All() ([]Event, error) {
	var events []Event
	for {
		ev, err := er.Next()
		if errors.Is(err, io.EOF) {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		events = append(events, ev)
	}
}
