package problem

import (
	"log/slog"
	"sync"
)

// Types are every problem type the two tiers send, by slug (the type URI
// is Base + slug), with when each is sent. Clients switch on these, and
// the OpenAPI description lists them (edge/openapi.json's
// x-problem-types): a new kind of problem is added here, and the edge's
// TestOpenAPI then asks for it in the description. That test also reads
// the sources for slugs passed to Write that are missing here.
var Types = map[string]string{
	// Both tiers.
	"not-found":              "no such endpoint (404)",
	"unauthorized":           "no valid API key (edge) or device credentials (node) (401)",
	"too-many-auth-failures": "too many failed credential look-ups from this address (429, Retry-After)",
	"unavailable":            "the database cannot be reached now (503, Retry-After)",
	"not-ready":              "a readiness probe that fails (503)",
	// The edge.
	"method-not-allowed":      "the resource does not allow this method (405, Allow)",
	"internal":                "a bug of ours (500)",
	"insufficient-scope":      "the API key lacks the route's scope (403)",
	"csrf-token-invalid":      "a request authenticated by the console's session cookie without its X-CSRF-Token (403)",
	"rate-limited":            "past the API key's request rate (429, Retry-After)",
	"too-many-streams":        "past the API key's open event streams (429, Retry-After)",
	"request-timeout":         "the request body did not arrive within 30 s (408)",
	"request-too-large":       "a body over 64 KiB, or 1 MiB for a job (413)",
	"unsupported-media-type":  "a body in a media type the route does not read (415)",
	"invalid-json":            "a body that is not the JSON the route reads (400)",
	"invalid-command":         "a command request that breaks a rule (400)",
	"invalid-wait":            "a ?wait= that is not a duration (400)",
	"invalid-idempotency-key": "an Idempotency-Key that is too long or not printable ASCII (400)",
	"idempotency-key-reused":  "an Idempotency-Key reused with another request (422)",
	"invalid-last-event-id":   "a Last-Event-ID (or ?after=) this stream did not send (400)",
	"invalid-command-id":      "a command id that is not a UUID (400)",
	"command-not-found":       "no such command (404)",
	"invalid-device-id":       "a device id that breaks the id rules (400)",
	"device-not-found":        "no such device (404)",
	"device-exists":           "a device with this id exists (409)",
	"invalid-labels":          "labels that break the label rules, or too many (400)",
	"invalid-query":           "an unknown, repeated or malformed query parameter (400)",
	"invalid-label-selector":  "a label selector that cannot be read (400)",
	"invalid-cursor":          "a cursor that was damaged, or belongs to other filters (400)",
	// Fleet jobs.
	"invalid-target":               "a job target that is missing, of two kinds or malformed (400)",
	"unknown-devices":              "a job's device list names devices that do not exist (400)",
	"no-targets":                   "a job target that matches no device (400)",
	"too-many-targets":             "a job target that matches more than 100,000 devices (400)",
	"invalid-rate":                 "a job rate that is not above 0 and at most 10,000 (400)",
	"invalid-abort-failed-percent": "a job abort_failed_percent that is not 0 to 100 (400)",
	"invalid-job-id":               "a job id that is not a UUID (400)",
	"job-not-found":                "no such job (404)",
	// The connection nodes' device endpoint.
	"node-draining":           "the node is stopping: connect to another (503)",
	"node-full":               "the node holds all the sessions it can (503, Retry-After)",
	"websocket-required":      "a connect request without a WebSocket upgrade (400)",
	"unsupported-subprotocol": "a connect request without the switchboard.v1 subprotocol (400)",
}

// unregistered remembers the unknown slugs already logged.
var unregistered sync.Map

// checkType logs, once per slug, a problem type missing from Types: a
// bug for the tests to catch, never a reason to fail a response.
func checkType(slug string) {
	if _, ok := Types[slug]; ok {
		return
	}
	if _, logged := unregistered.LoadOrStore(slug, true); !logged {
		slog.Error("problem type not in problem.Types: add it, and to the OpenAPI description", "type", Base+slug)
	}
}
