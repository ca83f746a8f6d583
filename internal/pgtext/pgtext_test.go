package pgtext

import (
	"errors"
	"net/http/httptest"
	"testing"
)

func TestValid(t *testing.T) {
	for s, want := range map[string]bool{
		"": true, "lab": true, "é€😀": true, "\t\n\x7f": true,
		"lab\x00": false, "\xc0\xaf": false, "\xff": false, "\xed\xa0\x80": false, // a surrogate
	} {
		if got := Valid(s); got != want {
			t.Errorf("Valid(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestCheckRequest(t *testing.T) {
	for target, want := range map[string]error{
		"/v1/devices?region=lab&label=a=b": nil,
		"/v1/devices?region=lab%00":        ErrQuery,
		"/v1/devices?node=%C0%AF":          ErrQuery,
		"/v1/devices?%FF=1":                ErrQuery,
		"/v1/devices/dev%00":               ErrPath,
		"/v1/devices/%FF/events":           ErrPath,
		"/v1/devices/caf%C3%A9?q=%C3%A9":   nil,
	} {
		if err := CheckRequest(httptest.NewRequest("GET", target, nil)); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("CheckRequest(%s) = %v, want %v", target, err, want)
		}
	}
}
