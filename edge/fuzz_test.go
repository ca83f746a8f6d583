package edge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/problem"
	"github.com/switchboard-iot/switchboard/internal/testkit/fuzzcheck"
)

// FuzzCommandRequest feeds a POST /v1/devices/{id}/commands what a client
// controls before the database is asked: the body, ?wait= and the
// Idempotency-Key header. A refused body is answered with a problem; an
// accepted request is one the database can store and a retry of it, sent
// again however spaced, is recognised as the same.
func FuzzCommandRequest(f *testing.F) {
	bodies := []string{
		`{"name":"set_target","args":{"celsius":21.5},"timeout":"10s","ttl":"1h"}`,
		`{"name":"get_state"}`,
		`{"name":"a.b:c/d-e_f","args":null,"timeout":30,"ttl":0.5e4}`,
		`{"name":"x","args":{"nested":[{"a":[1,2,{"b":null}]}],"s":"<&>\u2028"},"timeout":"1m30s"}`,
		` {"name" : "x" , "args" : { } } `,
		`{"name":"x","timeout":"600s","ttl":"168h"}`,
		`{"name":"x","timeout":1,"ttl":604800}`,
		`{"name":"x","timeout":1e300}`,
		`{"name":"x","timeout":-1e-300}`,
		`{"name":"x","timeout":"-0s","ttl":null}`,
		`{"name":"x","timeout":"9223372036854775807ns"}`,
		`{"name":"x","args":{"s":"a\u0000b"}}`,
		`{"name":"x","args":{"s":"\ud800"}}`,
		`{"name":"x","args":{"n":1e131072}}`,
		"{\"name\":\"x\",\"args\":{\"s\":\"\xff\"}}",
		`{"name":"x","args":[1]}`,
		`{"name":"x","args":"{}"}`,
		`{"name":"has space"}`,
		`{"name":"` + strings.Repeat("n", 129) + `"}`,
		`{"name":"x","tiemout":"5s"}`,
		`{"name":"x","name":"y"}`,
		`{"name":"x"}{"name":"x"}`,
		`{"name":"x"} x`,
		`{"name":"x"}]`, // once taken: json.Decoder.More stops at a "]" or "}"
		`{}}`,
		`{"name":`,
		`"read"`,
		`null`,
		``,
		`{"name":"x","args":` + strings.Repeat(`{"a":`, 10001) + `1` + strings.Repeat(`}`, 10001) + `}`,
		`{"name":"x","args":{"pad":"` + strings.Repeat("a", maxBody-40) + `"}}`,
		`{"name":"x","args":{"pad":"` + strings.Repeat("a", maxBody) + `"}}`,
	}
	for i, b := range bodies {
		waits := []string{"", "10s", "0", "-1s", "banana", "1h", "9223372036854775807ns"}
		keys := []string{"", "order-7", "0b7c3a52-6f0e-4d1a-9c39-2f4b1e8a9d10", "tab\there", "é", strings.Repeat("k", 256)}
		f.Add([]byte(b), waits[i%len(waits)], keys[i%len(keys)])
	}
	f.Fuzz(func(t *testing.T, body []byte, wait, key string) {
		var req commandRequest
		var decoded bool
		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/devices/dev-1/commands", bytes.NewReader(body))
		fuzzcheck.Allocs(t, len(body), func() { decoded = decodeJSON(rec, r, &req) })
		if !decoded {
			checkBodyRefused(t, body, rec)
		} else {
			if rec.Body.Len() > 0 || len(rec.Header()) > 0 {
				t.Fatalf("decodeJSON(%s) accepted the body but answered too: %s", excerpt(body), rec.Body)
			}
			if len(body) <= maxBody && !json.Valid(body) {
				t.Fatalf("decodeJSON(%s) accepted a body that is not one JSON value", excerpt(body))
			}
			if bad := req.validate(); bad == nil {
				checkValidRequest(t, body, req)
			}
		}

		d, ok := parseWait(wait, time.Minute)
		if ok && (d < 0 || d > time.Minute || wait == "" && d != 0) {
			t.Fatalf("parseWait(%q) = %v, want a duration from 0 to the limit", wait, d)
		}
		if validIdempotencyKey(key) != printableASCII(key, maxIdempotencyKey) {
			t.Fatalf("validIdempotencyKey(%q) = %v", key, !printableASCII(key, maxIdempotencyKey))
		}
	})
}

// checkBodyRefused asserts that a refused body was answered with a problem:
// 413 for a body over the limit, 400 otherwise.
func checkBodyRefused(t *testing.T, body []byte, rec *httptest.ResponseRecorder) {
	t.Helper()
	var p problem.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("decodeJSON(%s) refused the body without a problem: %d %s", excerpt(body), rec.Code, rec.Body)
	}
	want, slug := http.StatusBadRequest, "invalid-json"
	switch {
	case rec.Code == http.StatusRequestEntityTooLarge:
		want, slug = http.StatusRequestEntityTooLarge, "request-too-large"
	case p.Type == problem.Base+"invalid-duration":
		slug = "invalid-duration" // a timeout or ttl that is not a duration
	}
	if rec.Code != want || p.Status != want || p.Type != problem.Base+slug || p.Detail == "" ||
		want == http.StatusRequestEntityTooLarge && len(body) <= maxBody {
		t.Fatalf("decodeJSON(%s) answered %d %+v", excerpt(body), rec.Code, p)
	}
}

// checkValidRequest asserts what the handler and the database rely on in a
// request validate accepted.
func checkValidRequest(t *testing.T, body []byte, req commandRequest) {
	t.Helper()
	fail := func(why string) { t.Fatalf("body %s: %s", excerpt(body), why) }
	if !protocol.ValidName(req.Name) {
		fail("invalid name")
	}
	var args map[string]json.RawMessage
	if err := json.Unmarshal(req.Args, &args); err != nil || args == nil {
		fail("args is not a JSON object")
	}
	if err := protocol.CheckStorable(req.Args); err != nil {
		fail("args cannot be stored: " + err.Error())
	}
	if len(req.Args) > MaxArgs {
		fail("args over MaxArgs")
	}
	if d := time.Duration(req.Timeout); d < time.Second || d > command.MaxTimeout {
		fail("timeout out of range")
	}
	if d := time.Duration(req.TTL); d < time.Second || d > command.MaxTTL {
		fail("ttl out of range")
	}
	again := req
	if bad := again.validate(); bad != nil || !bytes.Equal(again.Args, req.Args) || again.Timeout != req.Timeout || again.TTL != req.TTL {
		fail("validating again changed it")
	}

	// A retry is the same request: the client may send it re-encoded, with
	// its args spaced otherwise, under the same Idempotency-Key. (Only the
	// spacing: the hash tells apart args that differ in key order or
	// escapes, though jsonb would store them alike.)
	var spaced bytes.Buffer
	if err := json.Indent(&spaced, req.Args, "\t", " "); err != nil {
		fail("args cannot be indented: " + err.Error())
	}
	var retry bytes.Buffer
	enc := json.NewEncoder(&retry)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(commandRequest{Name: req.Name, Args: spaced.Bytes(), Timeout: req.Timeout, TTL: req.TTL}); err != nil {
		fail("cannot re-encode: " + err.Error())
	}
	if retry.Len() > maxBody {
		return // spacing made it too large to send
	}
	var req2 commandRequest
	rec := httptest.NewRecorder()
	if !decodeJSON(rec, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(retry.Bytes())), &req2) {
		fail("its re-encoding " + excerpt(retry.Bytes()) + " is refused: " + rec.Body.String())
	}
	if bad := req2.validate(); bad != nil {
		fail("its re-encoding " + excerpt(retry.Bytes()) + " is invalid: " + bad.Error())
	}
	if !bytes.Equal(req.hash("dev-1"), req2.hash("dev-1")) {
		fail("its re-encoding " + excerpt(retry.Bytes()) + " hashes differently: a retry would get 422")
	}
}

// excerpt quotes the start of a body for a failure message.
func excerpt(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%q… (%d bytes)", b[:300], len(b))
	}
	return fmt.Sprintf("%q", b)
}

func printableASCII(s string, maxLen int) bool {
	if len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// FuzzLastEventID feeds the Last-Event-ID of a resumed command or job
// stream: what it accepts is a step number a stream could have sent.
func FuzzLastEventID(f *testing.F) {
	for _, s := range []string{"", "0", "1", "3", "+1", "007", "-1", "1.0", " 1", "1 ", "x", "9223372036854775807", "9223372036854775808", "١"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		n, ok := parseLastEventID(v)
		if !ok {
			return
		}
		if n < 0 || n > maxStreamSeq || v == "" && n != 0 {
			t.Fatalf("parseLastEventID(%q) = %d", v, n)
		}
		if again, ok := parseLastEventID(strconv.Itoa(n)); !ok || again != n {
			t.Fatalf("parseLastEventID(%q) = %d, but %d reads as %d, %v", v, n, n, again, ok)
		}
	})
}
