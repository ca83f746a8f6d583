// Package authguard makes failed authentications cheap for the server and
// slow for whoever fails them, so that credential stuffing costs almost
// nothing: a credential that failed moments ago is refused again without a
// database look-up (a short negative cache), and a source address that
// failed too often is answered 429 before any look-up (a token bucket of
// failures per address). Only look-ups that failed are charged: a client
// repeating one wrong credential costs nothing and is not throttled, so a
// few broken devices behind a NAT do not lock out the others.
//
// There is deliberately no limiter per device id or API key: anyone who
// knows a device's id could then lock that device out. Secrets are 256-bit
// random tokens; guessing one is hopeless, and the address limiter bounds
// the look-ups such guessing costs.
package authguard

import (
	"cmp"
	"crypto/sha256"
	"net/netip"
	"time"

	"github.com/switchboard-iot/switchboard/internal/expiring"
	"github.com/switchboard-iot/switchboard/internal/ratelimit"
)

// Config tunes a guard. Zero values take the defaults noted.
type Config struct {
	// FailureRate is how many failed look-ups a second a source address
	// earns back (1); FailureBurst how many it may make at once (20).
	// A negative FailureRate turns the address limiter off.
	FailureRate  float64
	FailureBurst int
	// Remember is how long a failed credential is refused without a
	// look-up (30s): a device provisioned or a secret set just after a
	// failed attempt with it works once this has passed.
	Remember time.Duration
	// Size bounds each table: source addresses, failed credentials
	// (16384 each; the oldest entry makes room).
	Size int
}

// Defaults.
const (
	DefaultFailureRate  = 1.0
	DefaultFailureBurst = 20
	DefaultRemember     = 30 * time.Second
	DefaultSize         = 16384
)

// Guard is shared by all the requests of one server.
type Guard struct {
	remember time.Duration
	sources  *ratelimit.Table // nil: off
	failed   *expiring.Map[[sha256.Size]byte, struct{}]
}

// withDefaults fills what the caller left zero.
func (c Config) withDefaults() Config {
	c.FailureRate = cmp.Or(c.FailureRate, DefaultFailureRate)
	c.FailureBurst = cmp.Or(c.FailureBurst, DefaultFailureBurst)
	c.Remember = cmp.Or(c.Remember, DefaultRemember)
	c.Size = cmp.Or(c.Size, DefaultSize)
	return c
}

// New makes a guard.
func New(cfg Config) *Guard {
	cfg = cfg.withDefaults()
	g := &Guard{remember: cfg.Remember, failed: expiring.New[[sha256.Size]byte, struct{}](cfg.Size)}
	if cfg.FailureRate > 0 && cfg.FailureBurst > 0 {
		g.sources = ratelimit.NewTable(cfg.FailureRate, cfg.FailureBurst, cfg.Size)
	}
	return g
}

// Verdict is what to do with an authentication attempt.
type Verdict int

const (
	Check    Verdict = iota // look the credential up
	Refuse                  // it failed moments ago: answer as for a wrong one, without a look-up
	Throttle                // the source failed too often: answer 429, without a look-up
)

// Admit says what to do with an attempt from source that presents
// credentials, each a string naming what was presented (several when a
// failure may have been remembered under any of them: a device's id alone,
// and its id with the secret). When it is Throttle, retryAfter says when
// the source may try again.
func (g *Guard) Admit(source netip.Addr, credentials ...string) (v Verdict, retryAfter time.Duration) {
	now := time.Now()
	if g.sources != nil {
		if s := g.sources.Look(sourceKey(source), now); !s.OK {
			return Throttle, s.RetryAfter
		}
	}
	for _, c := range credentials {
		if _, failed := g.failed.Get(sha256.Sum256([]byte(c)), now); failed {
			return Refuse, 0
		}
	}
	return Check, 0
}

// Failed records a look-up that refused credential, charging source.
func (g *Guard) Failed(source netip.Addr, credential string) {
	now := time.Now()
	g.failed.Put(sha256.Sum256([]byte(credential)), struct{}{}, now, g.remember)
	if g.sources != nil {
		g.sources.Take(sourceKey(source), now)
	}
}

// sourceKey names the bucket of an address: an IPv6 client is charged by
// its /64, which one subscriber usually holds whole.
func sourceKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String() // IPv4, or "invalid IP" for all unknown peers
}
