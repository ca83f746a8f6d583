package problem

import "net/http"

// The problem types the two tiers send. Clients switch on them, and the
// OpenAPI description lists them (edge/openapi.json's x-problem-types,
// checked against All by the edge's TestOpenAPI): a new kind of problem is
// declared here and described there. The edge's 400s share the title "Bad
// request"; the type says what was bad.
var (
	// Both tiers.
	NotFound            = newType("not-found", http.StatusNotFound, "Not found", "no such endpoint")
	Unauthorized        = newType("unauthorized", http.StatusUnauthorized, "Unauthorized", "no valid API key (edge) or device credentials (node)")
	TooManyAuthFailures = newType("too-many-auth-failures", http.StatusTooManyRequests, "Too many failed authentications", "too many failed credential look-ups from this address")
	Unavailable         = newType("unavailable", http.StatusServiceUnavailable, "Service unavailable", "the database cannot be reached now")
	NotReady            = newType("not-ready", http.StatusServiceUnavailable, "Not ready", "a readiness probe that fails")

	// The edge.
	MisdirectedRequest    = newType("misdirected-request", http.StatusMisdirectedRequest, "Misdirected request", "plain HTTP (X-Forwarded-Proto: http) for a host not among the edge's EDGE_HOSTS: not redirected")
	MethodNotAllowed      = newType("method-not-allowed", http.StatusMethodNotAllowed, "Method not allowed", "the resource does not allow this method")
	Internal              = newType("internal", http.StatusInternalServerError, "Internal error", "a bug of ours")
	InsufficientScope     = newType("insufficient-scope", http.StatusForbidden, "Insufficient scope", "the API key lacks the route's scope")
	CSRFTokenInvalid      = newType("csrf-token-invalid", http.StatusForbidden, "CSRF token invalid", "a request authenticated by the console's session cookie without its X-CSRF-Token")
	CrossSiteRequest      = newType("cross-site-request", http.StatusForbidden, "Cross-site request", "a sign-in, or a write authenticated by the console's session cookie, sent by another site's page")
	RateLimited           = newType("rate-limited", http.StatusTooManyRequests, "Rate limited", "past the API key's request rate")
	TooManyStreams        = newType("too-many-streams", http.StatusTooManyRequests, "Too many streams", "past the API key's open event streams")
	RequestTimeout        = newType("request-timeout", http.StatusRequestTimeout, "Request timeout", "the request body did not arrive within 30 s")
	RequestTooLarge       = newType("request-too-large", http.StatusRequestEntityTooLarge, "Request too large", "a body over 64 KiB (1 MiB for a job), or a command's args over 63 KiB")
	UnsupportedMediaType  = newType("unsupported-media-type", http.StatusUnsupportedMediaType, "Unsupported media type", "a body in a media type the route does not read")
	InvalidJSON           = newType("invalid-json", http.StatusBadRequest, "Bad request", "a body that is not the JSON the route reads")
	InvalidCommand        = newType("invalid-command", http.StatusBadRequest, "Bad request", "a command request that breaks a rule")
	InvalidWait           = newType("invalid-wait", http.StatusBadRequest, "Bad request", "a ?wait= that is not a duration")
	InvalidIdempotencyKey = newType("invalid-idempotency-key", http.StatusBadRequest, "Bad request", "an Idempotency-Key that is too long or not printable ASCII")
	IdempotencyKeyReused  = newType("idempotency-key-reused", http.StatusUnprocessableEntity, "Idempotency key reused", "an Idempotency-Key reused with another request")
	InvalidLastEventID    = newType("invalid-last-event-id", http.StatusBadRequest, "Bad request", "a Last-Event-ID (or ?after=) this stream did not send")
	InvalidCommandID      = newType("invalid-command-id", http.StatusBadRequest, "Bad request", "a command id that is not a UUID")
	CommandNotFound       = newType("command-not-found", http.StatusNotFound, "Command not found", "no such command")
	CommandInFlight       = newType("command-in-flight", http.StatusConflict, "Command in flight", "a cancel of a command already delivered: its device has it")
	CommandFinal          = newType("command-final", http.StatusConflict, "Command final", "a cancel of a command that is done, failed or expired")
	InvalidDeviceID       = newType("invalid-device-id", http.StatusBadRequest, "Bad request", "a device id that breaks the id rules")
	DeviceNotFound        = newType("device-not-found", http.StatusNotFound, "Device not found", "no such device")
	DeviceQueueFull       = newType("device-queue-full", http.StatusTooManyRequests, "Device queue full", "a command to a device that already has its cap of pending commands (100 by default)")
	DeviceExists          = newType("device-exists", http.StatusConflict, "Device exists", "a device with this id exists")
	InvalidLabels         = newType("invalid-labels", http.StatusBadRequest, "Bad request", "labels that break the label rules, or too many")
	InvalidPath           = newType("invalid-path", http.StatusBadRequest, "Bad request", "a path that holds NUL or invalid UTF-8")
	InvalidQuery          = newType("invalid-query", http.StatusBadRequest, "Bad request", "an unknown, repeated or malformed query parameter")
	InvalidLabelSelector  = newType("invalid-label-selector", http.StatusBadRequest, "Bad request", "a label selector that cannot be read")
	InvalidCursor         = newType("invalid-cursor", http.StatusBadRequest, "Bad request", "a cursor that was damaged, or belongs to other filters")

	// Device state (desired and reported).
	StateVersionMismatch = newType("state-version-mismatch", http.StatusPreconditionFailed, "State version mismatch", "an If-Match that names a desired state version other than the current one")
	StateTooLarge        = newType("state-too-large", http.StatusRequestEntityTooLarge, "State too large", "a desired state patch that would leave the document over 32 KiB")
	InvalidIfMatch       = newType("invalid-if-match", http.StatusBadRequest, "Bad request", "an If-Match that is not one quoted version number, or *")

	// Fleet jobs.
	InvalidTarget             = newType("invalid-target", http.StatusBadRequest, "Bad request", "a job target that is missing, of two kinds or malformed")
	UnknownDevices            = newType("unknown-devices", http.StatusBadRequest, "Bad request", "a job's device list names devices that do not exist")
	NoTargets                 = newType("no-targets", http.StatusBadRequest, "Bad request", "a job target that matches no device")
	TooManyTargets            = newType("too-many-targets", http.StatusBadRequest, "Bad request", "a job target that matches more than 100,000 devices")
	JobTooLarge               = newType("job-too-large", http.StatusRequestEntityTooLarge, "Job too large", "a job whose args, times its targets, pass 64 MiB")
	InvalidRate               = newType("invalid-rate", http.StatusBadRequest, "Bad request", "a job rate that is not above 0 and at most 10,000")
	InvalidAbortFailedPercent = newType("invalid-abort-failed-percent", http.StatusBadRequest, "Bad request", "a job abort_failed_percent that is not 0 to 100")
	InvalidRetry              = newType("invalid-retry", http.StatusBadRequest, "Bad request", "a job retry whose max_attempts is not 1 to 10, or whose backoff is not 0s to 1h")
	InvalidStartAt            = newType("invalid-start-at", http.StatusBadRequest, "Bad request", "a job start_at that is not an RFC 3339 time within 30 days")
	InvalidJobText            = newType("invalid-job-text", http.StatusBadRequest, "Bad request", "a job title or description that is too long or holds control characters")
	InvalidJobID              = newType("invalid-job-id", http.StatusBadRequest, "Bad request", "a job id that is not a UUID")
	JobNotFound               = newType("job-not-found", http.StatusNotFound, "Job not found", "no such job")
	InvalidJobKind            = newType("invalid-job-kind", http.StatusBadRequest, "Bad request", "a job request that names both a command (name) and a desired-state patch (desired), or gives a command's fields (args, timeout, ttl, retry, abort_failed_percent) with desired")
	JobKindMismatch           = newType("job-kind-mismatch", http.StatusConflict, "Job kind mismatch", "a command job's route asked of a state job (its commands), or a state job's of a command job (its targets)")

	// Managing devices and API keys (scope admin).
	InvalidDuration     = newType("invalid-duration", http.StatusBadRequest, "Bad request", "a duration that is not a Go duration such as \"24h\", or out of its range")
	InvalidSecret       = newType("invalid-secret", http.StatusBadRequest, "Bad request", "a device secret the client chose that is too weak to be random")
	InvalidImport       = newType("invalid-import", http.StatusBadRequest, "Bad request", "a device import line that breaks a rule (the detail names the line)")
	ImportTooLarge      = newType("import-too-large", http.StatusRequestEntityTooLarge, "Import too large", "a device import of more than 10,000 lines or 2 MiB")
	InvalidAPIKey       = newType("invalid-api-key", http.StatusBadRequest, "Bad request", "an API key's name or scopes that break the rules")
	APIKeyNotFound      = newType("api-key-not-found", http.StatusNotFound, "API key not found", "no such API key")
	PrivilegeEscalation = newType("privilege-escalation", http.StatusForbidden, "Privilege escalation", "a key asked for a key with a scope it lacks, or that outlives it")

	// Webhooks (scope admin).
	InvalidWebhook  = newType("invalid-webhook", http.StatusBadRequest, "Bad request", "a webhook whose url (https, no private address), events or names break the rules")
	WebhookNotFound = newType("webhook-not-found", http.StatusNotFound, "Webhook not found", "no such webhook")

	// The connection nodes' device endpoint.
	NodeDraining           = newType("node-draining", http.StatusServiceUnavailable, "Node is draining", "the node is stopping: connect to another")
	NodeFull               = newType("node-full", http.StatusServiceUnavailable, "Node is full", "the node holds all the sessions it can")
	TooManyConnects        = newType("too-many-connects", http.StatusTooManyRequests, "Too many connects", "a device connecting faster than its connect rate")
	WebSocketRequired      = newType("websocket-required", http.StatusBadRequest, "WebSocket upgrade required", "a connect request without a WebSocket upgrade")
	UnsupportedSubprotocol = newType("unsupported-subprotocol", http.StatusBadRequest, "Unsupported subprotocol", "a connect request without the switchboard.v1 subprotocol")
)
