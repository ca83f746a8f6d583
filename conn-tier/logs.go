package conntier

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/internal/lograte"
)

// What the node logs about sessions, at a volume that stays sane with
// 100,000 devices: each connect and disconnect at debug only, and at info a
// summary every LogInterval counting them (by reason), with the refused
// connects. Lines an outsider or a flapping fleet can multiply (refused
// credentials, replaced sessions) are limited to a few a LogInterval by
// lograte, which logs the count of the rest.
const (
	DefaultLogInterval = time.Minute
	DefaultRefusalLogs = 20  // refused connects logged a LogInterval, at most
	replacedLogs       = 100 // replaced sessions logged a LogInterval, at most
)

// sessionLog counts what a summary reports.
type sessionLog struct {
	mu          sync.Mutex
	connects    int
	disconnects map[string]int // by reason
	refused     map[string]int // by reason

	refusals *lograte.Limiter
	replaced *lograte.Limiter
}

func (n *Node) initSessionLog() {
	n.sessionLog.disconnects = make(map[string]int)
	n.sessionLog.refused = make(map[string]int)
	n.sessionLog.refusals = lograte.New(n.log, slog.LevelInfo, "device connect refused", n.cfg.RefusalLogs, n.cfg.LogInterval)
	n.sessionLog.replaced = lograte.New(n.log, slog.LevelInfo, "session replaced", replacedLogs, n.cfg.LogInterval)
}

func (n *Node) countConnect() {
	n.sessionLog.mu.Lock()
	n.sessionLog.connects++
	n.sessionLog.mu.Unlock()
}

func (n *Node) countDisconnect(reason string) {
	n.sessionLog.mu.Lock()
	n.sessionLog.disconnects[reason]++
	n.sessionLog.mu.Unlock()
}

// refusedConnect logs a connect refused for its credentials (rate-limited)
// and counts it for the summary. deviceID is the one the client claimed,
// "" when it gave none that is valid; the address is the client's as the
// node sees it (through trusted proxies).
func (n *Node) refusedConnect(r *http.Request, deviceID string, status int, reason string) {
	n.sessionLog.mu.Lock()
	n.sessionLog.refused[reason]++
	n.sessionLog.mu.Unlock()
	args := []any{"remote", clientaddr.Peer(r).String(), "status", status, "reason", reason}
	if deviceID != "" {
		args = append(args, "device", deviceID)
	}
	n.sessionLog.refusals.Log(args...)
}

// logReplaced logs a session closed with 4008 for a newer one of its
// device. newNode is "" when the newer session is on this node; newSession
// is uuid.Nil when this node does not know it (found by the rescan).
func (n *Node) logReplaced(deviceID string, old, newSession uuid.UUID, oldNode string) {
	args := []any{"device", deviceID, "old_session", old.String()}
	if oldNode != "" {
		args = append(args, "old_node", oldNode)
	}
	if newSession != uuid.Nil {
		args = append(args, "new_session", newSession.String())
	}
	n.sessionLog.replaced.Log(args...)
}

// logSummaries logs the summary every LogInterval, and once more as the
// node stops (the background actors stop after the sessions: the last
// summary counts the drain). Owned by the node's background group.
func (n *Node) logSummaries(ctx context.Context) error {
	tick := time.NewTicker(n.cfg.LogInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			n.logSummary()
			n.sessionLog.refusals.Stop()
			n.sessionLog.replaced.Stop()
			return nil
		case <-tick.C:
			n.logSummary()
		}
	}
}

// logSummary logs the counts since the last summary, unless all are zero.
func (n *Node) logSummary() {
	l := &n.sessionLog
	l.mu.Lock()
	connects, disconnects, refused := l.connects, l.disconnects, l.refused
	l.connects, l.disconnects, l.refused = 0, make(map[string]int), make(map[string]int)
	l.mu.Unlock()
	if connects == 0 && len(disconnects) == 0 && len(refused) == 0 {
		return
	}
	n.log.Info("sessions summary", "sessions", n.hub.len(), "connects", connects,
		byReason("disconnects", disconnects), byReason("refused", refused), "interval", n.cfg.LogInterval.String())
}

// byReason is a group of counts by reason, in reason order.
func byReason(name string, counts map[string]int) slog.Attr {
	attrs := make([]any, 0, len(counts))
	for _, reason := range slices.Sorted(maps.Keys(counts)) {
		attrs = append(attrs, slog.Int(reason, counts[reason]))
	}
	return slog.Group(name, attrs...)
}
