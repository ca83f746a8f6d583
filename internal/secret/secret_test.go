package secret

import (
	"encoding/hex"
	"strings"
	"testing"
)

// The formats of the tokens that reach clients and logs.
func TestTokenFormats(t *testing.T) {
	t.Parallel()
	if s := New("sbk_"); len(s) != len("sbk_")+43 || !strings.HasPrefix(s, "sbk_") || strings.ContainsAny(s, "+/=") {
		t.Errorf("New(sbk_) = %q, want sbk_ and 43 base64url characters", s)
	}
	for _, n := range []int{4, 32} {
		s := RandomHex(n)
		if b, err := hex.DecodeString(s); err != nil || len(b) != n {
			t.Errorf("RandomHex(%d) = %q, want %d hex characters", n, s, 2*n)
		}
	}
	if RandomHex(32) == RandomHex(32) {
		t.Error("two tokens are the same")
	}
}

func TestCheckImported(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{
		New(""),
		"0f3a9c27be41d86e5a7c0b9d2e4f6a81", // 128 bits of hex
		"Kx7-pQ2_mZ9vR4tW8yB3nL",           // 22 base64url characters
		"8203918475629301847562",           // 22 random digits
	} {
		if err := CheckImported(ok); err != nil {
			t.Errorf("CheckImported(%q) = %v, want nil", ok, err)
		}
	}
	for _, tc := range []struct{ secret, says string }{
		{"short", "at least 22"},
		{strings.Repeat("0", 30), "only 1 different characters"},
		{"abcabcabcabcabcabcabcabc", "only 3 different"},
		{"0123456701234567012345", "same 8 characters"},
		{"changeme-changeme-changeme", "same 9 characters"},
		{"password-password-password-pa", "same 9 characters"},
	} {
		err := CheckImported(tc.secret)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("CheckImported(%q) = %v, want an error saying %q", tc.secret, err, tc.says)
		}
		if err != nil && strings.Contains(err.Error(), tc.secret) {
			t.Errorf("the error repeats the secret: %v", err)
		}
	}
}

func TestPeriod(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]int{
		"": 0, "a": 1, "aaaa": 1, "abab": 2, "ababa": 2, "abcab": 3, "abcd": 4, "aabaab": 3, "abaababaab": 5,
	} {
		if got := period(s); got != want {
			t.Errorf("period(%q) = %d, want %d", s, got, want)
		}
	}
}
