package batch

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errRefused = errors.New("refused")

// sink records written batches; it refuses any batch holding a poison item
// and fails the first transientFailures calls as a transient outage.
type sink struct {
	mu                sync.Mutex
	written           []int
	batches           int
	calls             int
	transientFailures int
	poison            map[int]bool
	done              chan struct{}
	want              int // items to see written before done closes
}

func (s *sink) flush(_ context.Context, items []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls <= s.transientFailures {
		return errors.New("connection reset")
	}
	for _, it := range items {
		if s.poison[it] {
			return errRefused
		}
	}
	s.written = append(s.written, items...)
	s.batches++
	if len(s.written) == s.want {
		close(s.done)
	}
	return nil
}

func newBatcher(s *sink, limit, max int) *Batcher[int] {
	b := New("test", limit, max, slog.New(slog.DiscardHandler), s.flush, func(err error) bool { return errors.Is(err, errRefused) })
	b.Retry = backoff.Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond}
	return b
}

func run(t *testing.T, s *sink, items []int, max int) {
	t.Helper()
	b := newBatcher(s, len(items), max)
	// Queue everything before Run starts, so the batches are full.
	for _, it := range items {
		if err := b.Add(context.Background(), it); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- b.Run(ctx) }()
	<-s.done
	cancel()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if err := b.Add(context.Background(), 99); !errors.Is(err, ErrStopped) {
		t.Fatalf("Add after Run returned: %v, want ErrStopped", err)
	}
}

func TestBatchesWhatQueued(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 10}
	run(t, s, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 4)
	if !slices.Equal(s.written, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) || s.batches != 3 {
		t.Fatalf("written %v in %d batches, want 0..9 in 3 (4+4+2)", s.written, s.batches)
	}
}

func TestRefusedItemIsIsolated(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 7, poison: map[int]bool{3: true}}
	run(t, s, []int{0, 1, 2, 3, 4, 5, 6, 7}, 8)
	if !slices.Equal(s.written, []int{0, 1, 2, 4, 5, 6, 7}) {
		t.Fatalf("written %v, want every item but the refused 3, in order", s.written)
	}
}

func TestTransientFailureIsRetried(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 3, transientFailures: 2}
	run(t, s, []int{0, 1, 2}, 8)
	if !slices.Equal(s.written, []int{0, 1, 2}) || s.calls != 3 {
		t.Fatalf("written %v after %d calls, want all 3 after 2 failures and a success", s.written, s.calls)
	}
}

// An outage longer than any fixed number of attempts loses nothing: the
// batch is retried until the database takes it.
func TestLongOutageLosesNothing(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 3, transientFailures: 200}
	run(t, s, []int{0, 1, 2}, 8)
	if !slices.Equal(s.written, []int{0, 1, 2}) || s.calls != 201 {
		t.Fatalf("written %v after %d calls, want all 3 after 200 failures", s.written, s.calls)
	}
}

// A full queue makes Add wait (backpressure) until a write makes room; Push
// goes past the limit; TryAdd sheds.
func TestFullQueue(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 5}
	b := newBatcher(s, 2, 8)
	for i := range 2 {
		if err := b.Add(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	if !b.Full() || b.TryAdd(9) {
		t.Fatal("a queue at its limit took an item through TryAdd")
	}
	if err := b.Push(2); err != nil || b.Len() != 3 {
		t.Fatalf("Push past the limit: err %v, len %d", err, b.Len())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	err := b.Add(ctx, 9)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add to a full queue with no writer: %v, want to wait until its context ends", err)
	}

	added := make(chan error)
	go func() {
		err := b.Add(context.Background(), 3)
		if err == nil {
			err = b.Add(context.Background(), 4)
		}
		added <- err
	}()
	runCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- b.Run(runCtx) }()
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	<-s.done
	stop()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.written, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("written %v, want 0..4 in order", s.written)
	}
}

// What is still queued at shutdown is written within the grace; a
// producer waiting on a full queue is released with ErrStopped.
func TestShutdownDrainsAndReleases(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 2}
	b := newBatcher(s, 2, 1)
	_ = b.Add(context.Background(), 0)
	_ = b.Add(context.Background(), 1)
	waiting := make(chan error)
	go func() { waiting <- b.Add(context.Background(), 2) }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stopped before it started: it still drains
	if err := b.Run(ctx); err != nil {
		t.Fatal(err)
	}
	<-s.done
	if err := <-waiting; err != nil && !errors.Is(err, ErrStopped) {
		t.Fatalf("waiting producer: %v", err)
	}
}
