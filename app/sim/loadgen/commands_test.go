package loadgen

import "testing"

func TestOutcome(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status int
		body   string
		want   string
	}{
		{200, `{"id":"x","status":"done","ok":true,"result":{}}`, kindOK},
		{200, `{"id":"x","status":"done","ok":false,"error":"no"}`, kindNotOK},
		{200, `{"id":"x","status":"failed"}`, kindFailed},
		{200, `{"id":"x","status":"expired"}`, kindExpired},
		{200, `not json`, kindBadResponse},
		{202, `{"id":"x","status":"delivered"}`, kindNotDone},
		{404, `{"type":"https://switchboard.dev/problems/device-not-found","status":404}`, "http_404 device-not-found"},
		{502, `Bad Gateway`, "http_502"},
	} {
		if got := outcome(tc.status, []byte(tc.body)); got != tc.want {
			t.Errorf("outcome(%d, %s) = %q, want %q", tc.status, tc.body, got, tc.want)
		}
	}
}
