package edge

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/switchboard-iot/switchboard/db"
)

// An event stream is authenticated once, when it opens, and may then last
// for hours. So each open stream is held under its grant: the credential
// that opened it (an API key, or a console session acting as its key). When
// the grant ends, its streams' contexts are cancelled: each handler returns
// and its client sees the response end, and a reconnecting EventSource
// gets 401 and stops. A grant ends, on every edge, when
//   - its key is revoked: sb_keys names the key;
//   - its session signs out: sb_keys says "session" without naming it, so
//     each edge looks up the sessions its streams hold (the edge that signed
//     it out ends them at once);
//   - it expires: one timer per grant, at its key's or session's end;
//   - a lookup finds it gone after the listener reconnected, since a
//     revocation sent while it was away is not replayed.

var (
	errKeyRevoked = errors.New("its API key was revoked")
	errExpired    = errors.New("its API key or console session expired")
	errSignedOut  = errors.New("its console session signed out")
)

// grants holds this edge's open streams by their grant.
type grants struct {
	store *db.Store
	log   *slog.Logger
	keys  *keyCache     // its generation tells a credential checked before a drop
	wake  chan struct{} // cap 1: look the held grants up again

	mu     sync.Mutex // guards the following
	held   map[grantID]*grant
	lookUp lookUp // what the next lookup covers
}

// grantID names a credential: a console session by its cookie digest, a
// key by its id (session "").
type grantID struct {
	key     int64
	session string
}

type grant struct {
	streams map[*context.CancelCauseFunc]struct{}
	expiry  *time.Timer // nil: no end
}

// lookUp is what a lookup of the held grants covers.
type lookUp int

const (
	lookUpNone     lookUp = iota
	lookUpSessions        // a session signed out somewhere
	lookUpAll             // the listener reconnected: keys too
)

func newGrants(store *db.Store, keys *keyCache, log *slog.Logger) *grants {
	return &grants{store: store, log: log, keys: keys, wake: make(chan struct{}, 1), held: make(map[grantID]*grant)}
}

// endWithGrant holds each event stream under its credential (it runs after
// authenticate), so that it ends when the credential does.
func (e *Edge) endWithGrant(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !acceptsEventStream(r) {
			next.ServeHTTP(w, r)
			return
		}
		ctx, release := e.grants.hold(r.Context(), credentialOf(r))
		defer release()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// hold returns a context that is cancelled when c's grant ends, and the
// function that lets the stream go.
func (gs *grants) hold(parent context.Context, c credential) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	id := grantID{key: c.key.ID, session: c.session}
	gs.mu.Lock()
	g := gs.held[id]
	if g == nil {
		g = &grant{streams: make(map[*context.CancelCauseFunc]struct{})}
		if ends, ok := c.ends(); ok {
			g.expiry = time.AfterFunc(time.Until(ends), func() { gs.end(id, g, errExpired) })
		}
		gs.held[id] = g
	}
	g.streams[&cancel] = struct{}{}
	gs.mu.Unlock()
	// A revocation or sign-out handled since c was checked may have missed
	// this stream: look again.
	if gs.keys.generation() != c.gen {
		gs.recheck(lookUpAll)
	}
	return ctx, func() {
		gs.mu.Lock()
		delete(g.streams, &cancel)
		if len(g.streams) == 0 && gs.held[id] == g {
			delete(gs.held, id)
			if g.expiry != nil {
				g.expiry.Stop()
			}
		}
		gs.mu.Unlock()
		cancel(nil)
	}
}

// ends is when the credential stops working on its own: its key's expiry,
// or its session's if sooner.
func (c credential) ends() (time.Time, bool) {
	ends := c.sessionEnds
	if k := c.key.ExpiresAt; k != nil && (ends.IsZero() || k.Before(ends)) {
		ends = *k
	}
	return ends, !ends.IsZero()
}

// end ends g's streams, if g is still the grant held under id.
func (gs *grants) end(id grantID, g *grant, why error) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if gs.held[id] == g {
		gs.endLocked(id, g, why)
	}
}

// endWhere ends the grants whose id matches.
func (gs *grants) endWhere(match func(grantID) bool, why error) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	for id, g := range gs.held {
		if match(id) {
			gs.endLocked(id, g, why)
		}
	}
}

func (gs *grants) endLocked(id grantID, g *grant, why error) {
	delete(gs.held, id)
	if g.expiry != nil {
		g.expiry.Stop()
	}
	for cancel := range g.streams {
		(*cancel)(why)
	}
	gs.log.Info("ending event streams", "streams", len(g.streams), "key", id.key, "console_session", id.session != "", "why", why.Error())
}

// onKeysNotice handles an sb_keys notice: a revoked key's id, or "session"
// for a sign-out that does not say whose. It does not block (the notifier
// calls it).
func (gs *grants) onKeysNotice(payload string) {
	key, err := strconv.ParseInt(payload, 10, 64)
	if err != nil {
		gs.recheck(lookUpSessions)
		return
	}
	gs.endWhere(func(id grantID) bool { return id.key == key }, errKeyRevoked)
}

// signedOut ends a session's streams (this edge signed it out).
func (gs *grants) signedOut(session string) {
	gs.endWhere(func(id grantID) bool { return id.session == session }, errSignedOut)
}

// recheck asks run to look the held grants up again; it does not block.
func (gs *grants) recheck(what lookUp) {
	gs.mu.Lock()
	gs.lookUp = max(gs.lookUp, what)
	gs.mu.Unlock()
	select {
	case gs.wake <- struct{}{}:
	default:
	}
}

// run looks the held grants up whenever asked, until ctx ends; a lookup
// that failed is tried again a second later.
func (gs *grants) run(ctx context.Context) error {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-gs.wake:
		case <-retry.C:
		}
		if err := gs.lookUpHeld(ctx); err != nil && ctx.Err() == nil {
			gs.log.Warn("checking the credentials of open event streams; retrying", "err", err)
			retry.Reset(time.Second)
		}
	}
}

// lookUpHeld reads the held sessions (and keys, after a reconnect) again
// and ends the grants that are gone or revoked.
func (gs *grants) lookUpHeld(ctx context.Context) error {
	gs.mu.Lock()
	what := gs.lookUp
	gs.lookUp = lookUpNone
	held := make(map[grantID]*grant, len(gs.held))
	for id, g := range gs.held {
		if id.session != "" || what == lookUpAll {
			held[id] = g
		}
	}
	gs.mu.Unlock()
	for id, g := range held {
		why, err := gs.check(ctx, id)
		if err != nil {
			gs.mu.Lock()
			gs.lookUp = max(gs.lookUp, what) // again, in full, on the retry
			gs.mu.Unlock()
			return err
		}
		if why != nil {
			gs.end(id, g, why)
		}
	}
	return nil
}

// check reads a grant's credential and says why it no longer holds, if it
// does not.
func (gs *grants) check(ctx context.Context, id grantID) (why error, err error) {
	var k db.APIKey
	if id.session != "" {
		var s db.ConsoleSession
		s, err = gs.store.ConsoleSessionByHash(ctx, []byte(id.session))
		if errors.Is(err, db.ErrNotFound) {
			return errSignedOut, nil // or expired: its timer says so too
		}
		k = s.Key
	} else {
		k, err = gs.store.APIKeyByID(ctx, id.key)
		if errors.Is(err, db.ErrNotFound) {
			return errKeyRevoked, nil
		}
	}
	switch {
	case err != nil:
		return nil, err
	case k.RevokedAt != nil:
		return errKeyRevoked, nil
	}
	return nil, nil
}
