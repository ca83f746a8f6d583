package testsys

import (
	"io"

	"github.com/switchboard-iot/switchboard/internal/sse"
)

// Event is one Server-Sent Event.
type Event = sse.Event

// EventReader reads Server-Sent Events from a response body (package sse,
// which the command line reads its streams with too). Bound it with the
// request's context: Next blocks until an event or the end.
type EventReader = sse.Reader

func NewEventReader(r io.Reader) *EventReader { return sse.NewReader(r) }
