// Package problem writes RFC 9457 problem details, the one error format of
// both tiers' HTTP responses. Each kind of problem has a stable type URI that
// clients may switch on; titles and details are for people.
package problem

import (
	"encoding/json"
	"math"
	"net/http"
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

// Write sends a problem with the given HTTP status; slug names its type.
func Write(w http.ResponseWriter, status int, slug, title, detail string) {
	checkType(slug)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: Base + slug, Title: title, Status: status, Detail: detail})
}

// NotReady answers a readiness probe that fails (503), saying why.
func NotReady(w http.ResponseWriter, why string) {
	Write(w, http.StatusServiceUnavailable, "not-ready", "Not ready", why)
}

// TooMany answers 429 with a Retry-After of retryAfter in whole seconds (at
// least 1).
func TooMany(w http.ResponseWriter, slug, title, detail string, retryAfter time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(Seconds(retryAfter)))
	Write(w, http.StatusTooManyRequests, slug, title, detail)
}

// Seconds rounds d up to whole seconds, at least 1: what Retry-After and
// the RateLimit fields carry.
func Seconds(d time.Duration) int {
	return max(int(math.Ceil(d.Seconds())), 1)
}
