package testsys

import (
	"bufio"
	"io"
	"strings"
)

// Event is one Server-Sent Event.
type Event struct {
	ID, Name, Data string
}

// EventReader reads Server-Sent Events from a response body. Bound it with
// the request's context: Next blocks until an event or the end.
type EventReader struct{ scanner *bufio.Scanner }

func NewEventReader(r io.Reader) *EventReader {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	return &EventReader{s}
}

// Next returns the next event, skipping comments (keep-alives); io.EOF when
// the stream ends.
func (er *EventReader) Next() (Event, error) {
	var ev Event
	for er.scanner.Scan() {
		line := er.scanner.Text()
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch {
		case line == "":
			if ev != (Event{}) {
				return ev, nil
			}
		case field == "id":
			ev.ID = value
		case field == "event":
			ev.Name = value
		case field == "data":
			ev.Data += value
		}
	}
	if err := er.scanner.Err(); err != nil {
		return Event{}, err
	}
	return Event{}, io.EOF
}

// All reads the rest of the stream.
func (er *EventReader) All() ([]Event, error) {
	var events []Event
	for {
		ev, err := er.Next()
		if err == io.EOF {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		events = append(events, ev)
	}
}
