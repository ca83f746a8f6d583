package batch

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"
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

func run(t *testing.T, s *sink, items []int, max int) {
	t.Helper()
	b := New("test", len(items), max, slog.New(slog.DiscardHandler), s.flush, func(err error) bool { return errors.Is(err, errRefused) })
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
