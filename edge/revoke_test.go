package edge_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Revoking a key, its expiry, signing a console session out and the
// session's expiry each end every open stream of that credential within a
// second, on every edge: not only on the edge that handled the revocation.

// streamEnd is how and when an open stream ended, as its client saw it.
type streamEnd struct {
	at  time.Time
	err error // io.EOF: the edge closed it cleanly
}

// watchedStream is an open event stream whose end a goroutine waits for.
type watchedStream struct {
	name  string
	ended chan streamEnd // receives once
}

// watch opens an event stream and reads it in a goroutine of its own until
// it ends: by the edge, or at the latest when the test closes its body.
func watch(t *testing.T, c *api, name, path string, hdr ...string) *watchedStream {
	t.Helper()
	_, events := c.stream(http.MethodGet, path, "", hdr...)
	s := &watchedStream{name: name, ended: make(chan streamEnd, 1)}
	go func() {
		for {
			if _, err := events.Next(); err != nil {
				s.ended <- streamEnd{at: time.Now(), err: err}
				return
			}
		}
	}()
	return s
}

// wantEnded checks that each stream ended cleanly (EOF), no earlier than
// the action that ends it began (begun) and within limit of its end
// (done): a revocation takes effect at its commit, somewhere between the
// two, and a loaded box may take most of a second to answer one. An
// instant (an expiry) is both.
func wantEnded(t *testing.T, streams []*watchedStream, begun, done time.Time, limit time.Duration, why string) {
	t.Helper()
	ctx, cancel := context.WithDeadline(t.Context(), done.Add(limit))
	defer cancel()
	var slowest time.Duration
	for _, s := range streams {
		select {
		case end := <-s.ended:
			took := end.at.Sub(done)
			switch {
			case !errors.Is(end.err, io.EOF):
				t.Errorf("%s: ended with %v, want a clean end (EOF)", s.name, end.err)
			case end.at.Before(begun):
				t.Errorf("%s: ended %v before %s", s.name, begun.Sub(end.at), why)
			case took > limit:
				t.Errorf("%s: ended %v after %s, want within %v", s.name, took, why, limit)
			}
			slowest = max(slowest, took)
		case <-ctx.Done():
			t.Errorf("%s: still open %v after %s", s.name, limit, why)
		}
	}
	t.Logf("%d streams ended at most %v after %s (which took %v)", len(streams), slowest.Round(time.Millisecond), why, done.Sub(begun).Round(time.Millisecond))
}

// wantOpen checks that none of the streams has ended.
func wantOpen(t *testing.T, streams []*watchedStream) {
	t.Helper()
	for _, s := range streams {
		select {
		case end := <-s.ended:
			t.Errorf("%s: ended (%v), want it still open", s.name, end.err)
		default:
		}
	}
}

// streamFixture is two edges on one database, a device that is offline,
// a command pending for it and a job running on it: something for every
// kind of stream to follow.
type streamFixture struct {
	sys     *testsys.System
	edges   []*testsys.Edge
	command uuid.UUID
	job     uuid.UUID
}

func newStreamFixture(t *testing.T) *streamFixture {
	t.Helper()
	sys := testsys.New(t)
	f := &streamFixture{sys: sys, edges: []*testsys.Edge{sys.StartEdge(t, "edge-a", nil), sys.StartEdge(t, "edge-b", nil)}}
	sys.AddDevice(t, "dev-1")
	c := newAPI(t, f.edges[0].URL, sys.APIKey(t))
	resp, b := c.sendCommand("dev-1", `{"name":"read","ttl":"1h"}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("sending a command: status %d; body %s", resp.StatusCode, b)
	}
	f.command = commandIDFrom(t, resp)
	f.job = postJob(t, c, `{"name":"read","target":{"devices":["dev-1"]},"ttl":"1h"}`).ID
	return f
}

// open opens, on every edge, one stream of each kind with the credential
// hdr carries (an Authorization or a Cookie header): the fleet's events, a
// device's, a command's and a job's.
func (f *streamFixture) open(t *testing.T, who string, hdr ...string) []*watchedStream {
	t.Helper()
	var streams []*watchedStream
	for _, e := range f.edges {
		c := newAPI(t, e.URL, "")
		for _, path := range []string{"/v1/events", "/v1/devices/dev-1/events",
			"/v1/commands/" + f.command.String() + "/events", "/v1/jobs/" + f.job.String()} {
			streams = append(streams, watch(t, c, e.ID+" "+who+" "+path, path, hdr...))
		}
	}
	return streams
}

// wantRefused checks that a new stream with the credential gets 401 on
// every edge.
func (f *streamFixture) wantRefused(t *testing.T, who string, hdr ...string) {
	t.Helper()
	for _, e := range f.edges {
		resp, b := newAPI(t, e.URL, "").call(http.MethodGet, "/v1/events", "", append([]string{"Accept", "text/event-stream"}, hdr...)...)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: a new stream of the %s: status %d, want 401; body %s", e.ID, who, resp.StatusCode, b)
		}
	}
}

// session signs a console session in for the key directly (the sign-in
// itself is the console's business) and returns its cookie and end.
func (f *streamFixture) session(t *testing.T, keyID int64, ttl time.Duration) (cookie []string, csrf string, ends time.Time) {
	t.Helper()
	token, csrf := secret.RandomHex(32), secret.RandomHex(32)
	if err := f.sys.Store.CreateConsoleSession(t.Context(), secret.Hash(token), keyID, csrf, ttl); err != nil {
		t.Fatal(err)
	}
	s, err := f.sys.Store.ConsoleSessionByHash(t.Context(), secret.Hash(token))
	if err != nil {
		t.Fatal(err)
	}
	return []string{"Cookie", "sb_session=" + token}, csrf, s.ExpiresAt
}

func bearer(key string) []string { return []string{"Authorization", "Bearer " + key} }

var streamScopes = []db.Scope{db.ScopeCommands, db.ScopeRead}

func TestRevocationEndsStreams(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t)
	key, k := addKey(t, f.sys, db.NewAPIKey{Name: "leaked", Scopes: streamScopes})
	cookie, _, _ := f.session(t, k.ID, time.Hour)
	leaked := append(f.open(t, "key", bearer(key)...), f.open(t, "session", cookie...)...)
	bystanders := f.open(t, "other key", bearer(f.sys.APIKey(t, streamScopes...))...)

	revoked := time.Now()
	if _, _, err := f.sys.Store.RevokeAPIKey(t.Context(), "leaked"); err != nil {
		t.Fatal(err)
	}
	wantEnded(t, leaked, revoked, time.Now(), time.Second, "the revocation")
	wantOpen(t, bystanders)
	f.wantRefused(t, "revoked key", bearer(key)...)
	f.wantRefused(t, "revoked key's session", cookie...)
}

// A revocation written while the edges' listeners were away (no notice
// reaches them) ends the streams once they are back.
func TestMissedRevocationEndsStreams(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t)
	key, k := addKey(t, f.sys, db.NewAPIKey{Name: "missed", Scopes: streamScopes})
	streams := f.open(t, "key", bearer(key)...)
	if _, err := f.sys.Pool.Exec(t.Context(), `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, k.ID); err != nil {
		t.Fatal(err)
	}
	wantOpen(t, streams) // no notice: nothing told the edges yet
	cut := time.Now()
	if _, err := f.sys.Pool.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, db.ListenerApplicationName); err != nil {
		t.Fatal(err)
	}
	// The listener reconnects after 100 ms or more (its backoff).
	wantEnded(t, streams, cut, time.Now(), 5*time.Second, "the listeners were cut")
}

func TestExpiryEndsStreams(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t)
	const ttl = 4 * time.Second // long enough to open the streams first
	key, k := addKey(t, f.sys, db.NewAPIKey{Name: "brief", Scopes: streamScopes, TTL: ttl})
	cookie, _, _ := f.session(t, k.ID, time.Hour) // the key's expiry ends its sessions too
	expiring := append(f.open(t, "key", bearer(key)...), f.open(t, "session", cookie...)...)
	bystanders := f.open(t, "other key", bearer(f.sys.APIKey(t, streamScopes...))...)

	wantEnded(t, expiring, *k.ExpiresAt, *k.ExpiresAt, time.Second, "the key's expiry")
	wantOpen(t, bystanders)
	f.wantRefused(t, "expired key", bearer(key)...)
}

func TestSessionExpiryEndsStreams(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t)
	_, k := addKey(t, f.sys, db.NewAPIKey{Name: "operator", Scopes: streamScopes})
	const ttl = 4 * time.Second // long enough to open the streams first
	cookie, _, ends := f.session(t, k.ID, ttl)
	other, _, _ := f.session(t, k.ID, time.Hour)
	expiring := f.open(t, "session", cookie...)
	bystanders := f.open(t, "other session", other...)

	wantEnded(t, expiring, ends, ends, time.Second, "the session's expiry")
	wantOpen(t, bystanders)
	f.wantRefused(t, "expired session", cookie...)
}

func TestSignOutEndsStreams(t *testing.T) {
	t.Parallel()
	f := newStreamFixture(t)
	key, k := addKey(t, f.sys, db.NewAPIKey{Name: "operator", Scopes: streamScopes})
	cookie, csrf, _ := f.session(t, k.ID, time.Hour)
	other, _, _ := f.session(t, k.ID, time.Hour)
	signedOut := f.open(t, "session", cookie...)
	bystanders := append(f.open(t, "other session", other...), f.open(t, "session's key", bearer(key)...)...)

	// Signed out on edge-a, as the console's form does it.
	e := f.edges[0]
	signOut := time.Now()
	resp, b := newAPI(t, e.URL, "").call(http.MethodPost, "/sign-out", url.Values{"csrf": {csrf}}.Encode(),
		append([]string{"Content-Type", "application/x-www-form-urlencoded", "Origin", e.URL, "Sec-Fetch-Site", "same-origin"}, cookie...)...)
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/sign-in" {
		t.Fatalf("sign-out: status %d at %s, want the sign-in page; body %.200s", resp.StatusCode, resp.Request.URL.Path, b)
	}
	wantEnded(t, signedOut, signOut, time.Now(), time.Second, "the sign-out")
	wantOpen(t, bystanders)
	f.wantRefused(t, "signed-out session", cookie...)
}
