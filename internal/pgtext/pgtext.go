// Package pgtext says whether text a client sent can reach PostgreSQL. A
// text value (and a parameter compared with one) must be valid UTF-8
// without NUL: otherwise the query fails (SQLSTATE 22021), and a client's
// mistake is answered as an outage. Servers check their inputs with it
// where they read them, before the database.
package pgtext

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Valid reports whether PostgreSQL's text can hold s.
func Valid(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// What CheckRequest refuses.
var (
	ErrPath  = errors.New("the path holds NUL or invalid UTF-8")
	ErrQuery = errors.New("the query holds NUL or invalid UTF-8")
)

// CheckRequest checks the text of r every handler may read: its path, and
// the names and values of its query parameters. The error wraps ErrPath or
// ErrQuery and names the parameter.
func CheckRequest(r *http.Request) error {
	if !Valid(r.URL.Path) {
		return ErrPath
	}
	for name, values := range r.URL.Query() {
		if !Valid(name) {
			return fmt.Errorf("%w: parameter %q", ErrQuery, name)
		}
		for _, v := range values {
			if !Valid(v) {
				return fmt.Errorf("%w: parameter %q", ErrQuery, name)
			}
		}
	}
	return nil
}
