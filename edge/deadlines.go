package edge

import (
	"net/http"
	"time"
)

// maxHeaderBytes bounds a request's line and headers; net/http answers 431
// past it. API requests carry a key and a few short headers.
const maxHeaderBytes = 32 << 10

// deadlines gives each request deadlines of its own, in place of the
// server's ReadTimeout and WriteTimeout, which would cut streams and long
// waits: net/http cancels a request whose read deadline passes while it
// watches the connection for a hang-up, and a write deadline counted from
// the request's start would end a stream after WriteTimeout.
//
// A request with a body must deliver it within ReadTimeout (decodeJSON
// lifts the deadline once the body is in), so a slowly sent body cannot
// hold a handler. A response must be written within WriteTimeout;
// handlers that answer later (a wait, a stream) move the deadline with
// writeSoon before each write, so a client that stopped reading cannot
// hold one forever.
func (e *Edge) deadlines(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		now := time.Now()
		_ = rc.SetWriteDeadline(now.Add(e.cfg.WriteTimeout))
		if r.ContentLength != 0 { // a body, or one of unknown length
			_ = rc.SetReadDeadline(now.Add(e.cfg.ReadTimeout))
		}
		next.ServeHTTP(w, r)
	})
}

// writeSoon gives the next write WriteTimeout from now.
func (e *Edge) writeSoon(rc *http.ResponseController) {
	_ = rc.SetWriteDeadline(time.Now().Add(e.cfg.WriteTimeout))
}

// bodyRead lifts the read deadline of a request whose body is in: what
// follows (a database call, a wait, a stream) must not be cancelled by it.
func bodyRead(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
}
