package device

import (
	"context"
	"encoding/json"
)

// commandIDKey keys the command's id in its handler's context.
type commandIDKey struct{}

// CommandID returns the id of the command whose handler was given ctx ("" for
// another context). A redelivery carries the same id: a handler that keeps
// its own record of what it did, or reports it (an event naming the
// command), uses it.
func CommandID(ctx context.Context) string {
	id, _ := ctx.Value(commandIDKey{}).(string)
	return id
}

// withCommandID wraps h (nil stays nil) so that its context carries id.
func withCommandID(h HandlerFunc, id string) HandlerFunc {
	if h == nil {
		return nil
	}
	return func(ctx context.Context, args json.RawMessage) (any, error) {
		return h(context.WithValue(ctx, commandIDKey{}, id), args)
	}
}
