package app

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// NodeGCPercent is a connection node's GC target (GOGC) unless the
// environment sets one. A node's heap is mostly its sessions, which live
// long and make little garbage while idle; the default of 100 lets the heap
// grow to twice them before collecting. Measured with 15,000 idle TLS
// WebSockets (BENCHMARKS.md, "Connection memory"): 22.7 KiB of RSS per
// session at 100, 18.3 KiB at 25.
const NodeGCPercent = 25

// TuneMemory sets GOMEMLIMIT to 90% of the cgroup's memory limit, or of the
// machine's memory when there is none, unless GOMEMLIMIT is set (or
// AUTOMEMLIMIT=off): the collector then works harder before the process
// would be killed for memory. gcPercent > 0 sets GOGC unless the environment
// does.
func TuneMemory(log *slog.Logger, gcPercent int) {
	limit, err := memlimit.Set(memlimit.WithProvider(memlimit.ApplyFallback(memlimit.FromCgroup, memlimit.FromSystem)))
	if err != nil {
		log.Warn("setting GOMEMLIMIT from the memory limit", "err", err)
	}
	gogc := os.Getenv("GOGC")
	if gogc == "" && gcPercent > 0 {
		debug.SetGCPercent(gcPercent)
		gogc = strconv.Itoa(gcPercent)
	}
	log.Debug("memory tuning", "gomemlimit_mib", limit>>20, "gogc", gogc)
}
