// Package sse reads Server-Sent Events (the edge's streams) as a client:
// the command line follows a command or a job with it, and the tests
// read every stream with it.
package sse

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

// Reader reads Server-Sent Events from a response body. Bound it with
// the request's context: Next blocks until an event or the end.
type Reader struct {
	scanner  *bufio.Scanner
	Comments int // ":" lines seen (keep-alives)
}

// NewReader reads events from r; an event's data may be up to 1 MiB.
func NewReader(r io.Reader) *Reader {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	return &Reader{scanner: s}
}

// Next returns the next event: io.EOF when the stream ended cleanly between
// events, io.ErrUnexpectedEOF when it ended inside one.
func (er *Reader) Next() (Event, error) {
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
func (er *Reader) All() ([]Event, error) {
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
