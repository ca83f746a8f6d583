package app

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// TuneMemory sets GOMEMLIMIT to 90% of the cgroup's memory limit, or of the
// machine's memory when there is none, unless GOMEMLIMIT is set (or
// AUTOMEMLIMIT=off): the collector then works harder before the process
// would be killed for memory.
func TuneMemory(log *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithProvider(memlimit.ApplyFallback(memlimit.FromCgroup, memlimit.FromSystem)))
	if err != nil {
		log.Warn("setting GOMEMLIMIT from the memory limit", "err", err)
	}
	log.Debug("memory tuning", "gomemlimit_mib", limit>>20, "gogc", os.Getenv("GOGC"))
}

// GC headroom of a connection node (GCTuner). A node's heap is mostly its
// sessions, which live long and make little garbage while idle: Go's
// default (GOGC=100) lets the heap grow to twice them before collecting,
// which is most of the cost of a large idle fleet (BENCHMARKS.md,
// "Connection memory": 22.7 KiB of RSS per session at 100, 18.3 KiB at 25).
// But the collector's CPU grows as GOGC shrinks, whatever the heap: at 25 a
// busy node spends half again as much CPU on the same commands. So the
// garbage a node may leave between collections is a fixed amount rather
// than a share: GOGC is NodeHeadroom over the live heap, between
// MinGCPercent and 100. A node of a few thousand sessions collects as Go
// does by default; one of 15,000 idle sessions (about 140 MB live) at 25.
const (
	NodeHeadroom = 32 << 20
	MinGCPercent = 25
)

// GCTuner keeps GOGC at headroom over the live heap (see NodeHeadroom),
// checked every second, unless the environment sets GOGC.
func GCTuner(headroom uint64) Server {
	return func(ctx context.Context) error {
		if os.Getenv("GOGC") != "" {
			<-ctx.Done()
			return nil
		}
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last := -1
		for {
			metrics.Read(sample)
			if live := sample[0].Value.Uint64(); live > 0 {
				if pct := gcPercent(live, headroom); pct != last {
					debug.SetGCPercent(pct)
					last = pct
				}
			}
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
	}
}

func gcPercent(live, headroom uint64) int {
	return int(max(MinGCPercent, min(100, 100*headroom/live)))
}
