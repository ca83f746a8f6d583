// Package actors runs the long-running pieces of a process: each is a
// function of a context, run as an oklog/run actor that stops when its own
// context is cancelled, in a goroutine whose end can be waited for.
package actors

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/oklog/run"
)

// Add adds fn to g; g's interrupt cancels fn's context.
func Add(g *run.Group, ctx context.Context, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(ctx)
	g.Add(func() error { return fn(ctx) }, func(error) { cancel() })
}

// Task is a function running in a goroutine of its own.
type Task struct {
	done chan struct{}
	err  error
}

// Go runs fn.
func Go(fn func() error) *Task {
	t := &Task{done: make(chan struct{})}
	go func() {
		defer close(t.done)
		t.err = fn()
	}()
	return t
}

// Done is closed when the function has returned.
func (t *Task) Done() <-chan struct{} { return t.done }

// Wait waits for the function and returns its error.
func (t *Task) Wait() error {
	<-t.done
	return t.err
}

// Group runs fns as one run.Group: when one returns, the others are
// stopped. The group outlives ctx (it keeps only its values): its owner
// calls stop once it has stopped what feeds the group, then waits.
func Group(ctx context.Context, fns ...func(context.Context) error) (t *Task, stop func()) {
	groupCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var g run.Group
	for _, fn := range fns {
		Add(&g, groupCtx, fn)
	}
	return Go(g.Run), stop
}

// Serve serves srv on ln, with TLS when srv.TLSConfig is set, until
// srv.Shutdown; the task's error is then nil.
func Serve(srv *http.Server, ln net.Listener) *Task {
	return Go(func() error {
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
}
