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
	b.c.retry = &backoff.Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond}
	return b
}

func run(t *testing.T, s *sink, items []int, max int) *Batcher[int] {
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
	return b
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
	b := run(t, s, []int{0, 1, 2}, 8)
	if !slices.Equal(s.written, []int{0, 1, 2}) || s.calls != 3 {
		t.Fatalf("written %v after %d calls, want all 3 after 2 failures and a success", s.written, s.calls)
	}
	if n := b.Retries(); n != 2 {
		t.Fatalf("Retries() = %d, want 2", n)
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
	if b.TryAdd(9) || b.Len() != 2 {
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

// A Batcher's Do waits out a transient failure (the batcher retries) and
// gets nil once its item is written; a refused item's caller gets the
// refusal.
func TestBatcherDo(t *testing.T) {
	s := &sink{done: make(chan struct{}), want: 2, transientFailures: 2, poison: map[int]bool{7: true}}
	b := newBatcher(s, 8, 8)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- b.Run(ctx) }()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, item := range []int{1, 7, 2} {
		wg.Go(func() { errs[i] = b.Do(context.Background(), item) })
	}
	wg.Wait()
	cancel()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], errRefused) {
		t.Fatalf("Do returned %v, want nil for the written items and the refusal for 7", errs)
	}
	if err := b.Do(context.Background(), 3); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do after Run returned: %v, want ErrStopped", err)
	}
}

var errNoSuchItem = errors.New("no such item")

// lookups answers items with ten times their value, as a read by id would:
// an item that is a multiple of 5 is not found (its caller's own error), a
// batch holding a poison item is refused, and while gate is set each call
// waits for it to close.
type lookups struct {
	mu      sync.Mutex // guards the following
	batches [][]int
	fail    error // every call fails with this
	poison  map[int]bool
	gate    chan struct{}
	entered chan struct{} // cap 1: a call is in flight
}

func (l *lookups) call(_ context.Context, items []int) ([]Outcome[int], error) {
	l.mu.Lock()
	l.batches = append(l.batches, slices.Clone(items))
	gate, fail := l.gate, l.fail
	l.mu.Unlock()
	if gate != nil {
		l.entered <- struct{}{}
		<-gate
	}
	if fail != nil {
		return nil, fail
	}
	out := make([]Outcome[int], len(items))
	for i, it := range items {
		switch {
		case l.poison[it]:
			return nil, errRefused
		case it%5 == 0:
			out[i].Err = errNoSuchItem
		default:
			out[i].Result = it * 10
		}
	}
	return out, nil
}

func (l *lookups) calls() [][]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.batches)
}

func newCalls(l *lookups, max int) *Calls[int, int] {
	return NewCalls(max, l.call, func(err error) bool { return errors.Is(err, errRefused) })
}

// waitLen polls until c holds n items: queued callers, those in flight.
func waitLen(t *testing.T, c *Calls[int, int], n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); c.Len() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("Len stayed %d, want %d", c.Len(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// outcome is what one caller of Do got.
type outcome struct {
	result int
	err    error
}

// submit calls Do for each item on a goroutine of its own, and returns
// where their outcomes arrive, in the items' order.
func submit(ctx context.Context, c *Calls[int, int], items []int) []chan outcome {
	out := make([]chan outcome, len(items))
	for i, it := range items {
		out[i] = make(chan outcome, 1)
		go func() {
			r, err := c.Do(ctx, it)
			out[i] <- outcome{r, err}
		}()
	}
	return out
}

// startCalls runs c until the test ends, then checks Do fails with
// ErrStopped.
func startCalls(t *testing.T, c *Calls[int, int]) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Error(err)
		}
		if _, err := c.Do(context.Background(), 1); !errors.Is(err, ErrStopped) {
			t.Errorf("Do after Run returned: %v, want ErrStopped", err)
		}
	})
}

// callQueued has a caller for each item queue before c runs, so that they
// go together, and checks that each got ten times its item, or the error
// in errs for it.
func callQueued(t *testing.T, c *Calls[int, int], items []int, errs map[int]error) {
	t.Helper()
	answers := submit(context.Background(), c, items)
	waitLen(t, c, len(items))
	startCalls(t, c)
	for i, it := range items {
		got := <-answers[i]
		if want := errs[it]; want != nil {
			if !errors.Is(got.err, want) {
				t.Errorf("item %d: %+v, want error %v", it, got, want)
			}
		} else if got.err != nil || got.result != it*10 {
			t.Errorf("item %d: %+v, want %d", it, got, it*10)
		}
	}
}

// Callers queued together are called together, and each gets its own
// outcome: its result, or the error that is its item's alone.
func TestCallsAnswerEachCaller(t *testing.T) {
	l := &lookups{}
	items := []int{1, 2, 5, 3}
	callQueued(t, newCalls(l, 8), items, map[int]error{5: errNoSuchItem})
	if b := l.calls(); len(b) != 1 || len(b[0]) != len(items) {
		t.Fatalf("calls %v, want one of all %d items", b, len(items))
	}
}

// A batch the database refuses is split until the item at fault is alone:
// only its caller gets the refusal.
func TestCallsRefusedItemIsIsolated(t *testing.T) {
	l := &lookups{poison: map[int]bool{3: true}}
	callQueued(t, newCalls(l, 8), []int{1, 2, 3, 4, 6, 7, 8, 9}, map[int]error{3: errRefused})
	// 8 → 4+4, the poisoned 4 → 2+2, the poisoned 2 → 1+1.
	if n := len(l.calls()); n != 7 {
		t.Fatalf("%d calls, want 7 (halving down to the refused item): %v", n, l.calls())
	}
}

// A failed call is answered, not retried: every caller of the batch gets
// its error.
func TestCallsFailureIsAnswered(t *testing.T) {
	outage := errors.New("connection reset")
	l := &lookups{fail: outage}
	callQueued(t, newCalls(l, 8), []int{1, 2, 3}, map[int]error{1: outage, 2: outage, 3: outage})
	if n := len(l.calls()); n != 1 {
		t.Fatalf("%d calls, want 1: no retries", n)
	}
}

// Items that queue while a call is in flight go together in the next one,
// at most max at a time; a caller that gives up (while queued or in flight)
// returns at once and holds up nothing.
func TestCallsGatherBehindTheCallInFlight(t *testing.T) {
	l := &lookups{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	c := newCalls(l, 4)
	startCalls(t, c)
	first := submit(context.Background(), c, []int{1})
	<-l.entered

	gone, leave := context.WithCancel(context.Background())
	quitter := submit(gone, c, []int{6})
	behind := submit(context.Background(), c, []int{2, 3, 4, 7, 8})
	waitLen(t, c, 7) // one in flight, six queued
	leave()
	if got := <-quitter[0]; !errors.Is(got.err, context.Canceled) {
		t.Fatalf("the caller that gave up got %+v", got)
	}
	l.mu.Lock()
	gate := l.gate
	l.gate = nil // the calls after this one go straight through
	l.mu.Unlock()
	close(gate)
	for i, a := range append(first, behind...) {
		if got := <-a; got.err != nil || got.result%10 != 0 || got.result == 0 {
			t.Errorf("caller %d: %+v", i, got)
		}
	}
	waitLen(t, c, 0)
	b := l.calls()
	if len(b) != 3 || len(b[0]) != 1 || len(b[1]) != 4 || len(b[2]) != 2 {
		t.Fatalf("calls %v, want [1], then the six that queued behind it in batches of at most 4", b)
	}
}

// Many callers at once, under -race: each gets its own item's outcome.
func TestCallsConcurrent(t *testing.T) {
	l := &lookups{}
	c := newCalls(l, 16)
	startCalls(t, c)
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Go(func() {
			for i := range 50 {
				it := g*1000 + i
				r, err := c.Do(context.Background(), it)
				if it%5 == 0 {
					if !errors.Is(err, errNoSuchItem) {
						t.Errorf("item %d: %v, %v, want not found", it, r, err)
					}
				} else if err != nil || r != it*10 {
					t.Errorf("item %d: %v, %v, want %d", it, r, err, it*10)
				}
			}
		})
	}
	wg.Wait()
	n := 0
	for _, b := range l.calls() {
		if len(b) > 16 {
			t.Fatalf("a call of %d items, over max 16", len(b))
		}
		n += len(b)
	}
	if n != 20*50 {
		t.Fatalf("%d items called, want %d", n, 20*50)
	}
}

// What is queued when Run stops is still answered.
func TestCallsStopAnswersTheQueue(t *testing.T) {
	l := &lookups{}
	c := newCalls(l, 1)
	answers := submit(context.Background(), c, []int{1, 2})
	waitLen(t, c, 2)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stopped before it started: it still answers
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range answers {
		if got := <-a; got.err != nil {
			t.Errorf("a queued caller got %+v", got)
		}
	}
	if _, err := c.Do(context.Background(), 3); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do after Run returned: %v, want ErrStopped", err)
	}
}
