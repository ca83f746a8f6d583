// Package origin tells a request that another site's page made a browser
// send (cross-site request forgery, login CSRF among it) from one sent by
// our own pages, by the headers every current browser adds: Sec-Fetch-Site
// and Origin. A request with neither is not a browser acting for another
// site (curl, the SDKs, a browser older than 2020): it passes, since such a
// client holds the credentials it presents.
//
// The origin compared with is the one the browser sees: the Host it sent,
// which Fly's proxy and Caddy pass on unchanged, and https when the request
// came over TLS or the TLS-terminating proxy says X-Forwarded-Proto: https.
// These headers are believed from anyone: another site's page cannot set
// them on a victim's request, and a client that forges them fools only
// itself.
package origin

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// HTTPS says whether the browser reached us over HTTPS: directly, or
// through the TLS-terminating proxy in front, which says so in
// X-Forwarded-Proto.
func HTTPS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// Public is the origin the browser sees r at: scheme://host[:port], the
// scheme's default port left out, as browsers write an Origin.
func Public(r *http.Request) string {
	scheme := "http"
	if HTTPS(r) {
		scheme = "https"
	}
	return serialize(scheme, r.Host)
}

func serialize(scheme, host string) string {
	scheme, host = strings.ToLower(scheme), strings.ToLower(host)
	switch scheme {
	case "http":
		host = strings.TrimSuffix(host, ":80")
	case "https":
		host = strings.TrimSuffix(host, ":443")
	}
	return scheme + "://" + host
}

// CrossSite says why r was sent by another site's page, or "" when it was
// not. Sec-Fetch-Site must be same-origin or none (the user's own
// navigation); same-site is refused too, since our pages post only to
// their own origin. A present Origin must be Public(r), whatever
// Sec-Fetch-Site says; "null" (an opaque origin) is not.
func CrossSite(r *http.Request) string {
	switch s := r.Header.Get("Sec-Fetch-Site"); s {
	case "", "same-origin", "none":
	default:
		return fmt.Sprintf("the browser says another site's page sent this request (Sec-Fetch-Site: %.40q)", s)
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return ""
	}
	if u, err := url.Parse(o); err == nil && u.Host != "" && u.User == nil && u.Path == "" && u.RawQuery == "" &&
		serialize(u.Scheme, u.Host) == Public(r) {
		return ""
	}
	return fmt.Sprintf("a page of %.100q sent this request, not a page of this site (%s)", o, Public(r))
}
