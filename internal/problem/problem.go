// Package problem writes RFC 9457 problem details, the one error format of
// both tiers' HTTP responses. Each kind of problem is a Type declared in
// types.go, with a stable type URI that clients may switch on and the
// status it is sent with; titles and details are for people.
package problem

import (
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Base prefixes every problem type.
const Base = "https://switchboard.dev/problems/"

// Problem is one RFC 9457 problem document.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// Type is one kind of problem: its slug (the type URI is Base + slug), the
// HTTP status and title it is always sent with, and when it is sent. Its
// fields are unexported so that every Type comes from types.go, and so is
// in All.
type Type struct {
	slug   string
	status int
	title  string
	about  string
}

// all is every Type, in the order types.go declares them.
var all []Type

// newType declares a Type and adds it to all.
func newType(slug string, status int, title, about string) Type {
	t := Type{slug: slug, status: status, title: title, about: about}
	all = append(all, t)
	return t
}

// All returns every problem type the two tiers send: the list the OpenAPI
// description's x-problem-types must match (edge's TestOpenAPI).
func All() []Type { return slices.Clone(all) }

// Slug names the type; URI is its type URI (Base + slug).
func (t Type) Slug() string { return t.slug }
func (t Type) URI() string  { return Base + t.slug }

// Status and Title are what every response of the type carries.
func (t Type) Status() int   { return t.status }
func (t Type) Title() string { return t.title }

// About says when the type is sent, as the OpenAPI description says it
// (without the status and headers that follow there).
func (t Type) About() string { return t.about }

// Write sends the problem, with its status, and detail for people.
func (t Type) Write(w http.ResponseWriter, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(t.status)
	_ = json.NewEncoder(w).Encode(Problem{Type: t.URI(), Title: t.title, Status: t.status, Detail: detail})
}

// WriteRetryAfter is Write with a Retry-After of after in whole seconds
// (rounded up, at least 1).
func (t Type) WriteRetryAfter(w http.ResponseWriter, detail string, after time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(Seconds(after)))
	t.Write(w, detail)
}

// Seconds rounds d up to whole seconds, at least 1: what Retry-After and
// the RateLimit fields carry.
func Seconds(d time.Duration) int {
	return max(int(math.Ceil(d.Seconds())), 1)
}
