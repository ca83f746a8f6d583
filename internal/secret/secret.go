// Package secret makes and checks the credentials of devices and API keys,
// and makes every random token of Switchboard (Fill is the one source).
//
// Secrets are 256-bit random tokens, so they are stored as a SHA-256 digest,
// as GitHub and Stripe do for their tokens: guessing one is as hard as
// inverting the hash, and a slow password hash (bcrypt, argon2) would add
// nothing but cost. That cost matters here: a node that restarts sees its
// ~19k devices reconnect at once, and bcrypt at ~50 ms a check would keep two
// cores busy for minutes before the last device is back.
package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// Imported secrets (bulk import) must look random: at least
// MinImportedLength characters (22 base64 characters carry 128 bits when
// they are random), at least MinImportedDistinct different ones, and no
// shorter string repeated. A random secret of 22 characters or more passes
// all but surely: 22 random decimal digits fall short of 8 different ones
// about once in 25, 22 hex digits once in 7000, base64 never in practice;
// placeholders such as "0000000000000000000000" or
// "changeme-changeme-changeme" do not.
const (
	MinImportedLength   = 22
	MinImportedDistinct = 8
)

// New returns a fresh random secret with the given prefix (for example "sbk_"
// for API keys, so a leaked key is recognisable in logs and by scanners).
func New(prefix string) string {
	var b [32]byte
	Fill(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// RandomHex returns n random bytes in hex (2n characters): a console
// session's token and its CSRF token, the random part of an edge's id.
func RandomHex(n int) string {
	b := make([]byte, n)
	Fill(b)
	return hex.EncodeToString(b)
}

// Fill fills b with random bytes.
func Fill(b []byte) { _, _ = rand.Read(b) } // crypto/rand.Read never fails (Go 1.24 on)

// Hash returns the digest stored in place of s.
func Hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// Matches reports whether s hashes to digest, in constant time.
func Matches(s string, digest []byte) bool {
	h := sha256.Sum256([]byte(s))
	return subtle.ConstantTimeCompare(h[:], digest) == 1
}

// CheckImported rejects secrets that cannot be random enough: too short,
// of too few different characters, or a repeated pattern.
func CheckImported(s string) error {
	const advice = "use a random secret (or give the id alone to have one made)"
	if len(s) < MinImportedLength {
		return fmt.Errorf("secret is %d characters; at least %d random characters are required: %s", len(s), MinImportedLength, advice)
	}
	distinct := make(map[rune]bool)
	for _, r := range s {
		distinct[r] = true
	}
	if len(distinct) < MinImportedDistinct {
		return fmt.Errorf("secret uses only %d different characters; at least %d are required, since a random secret of this length has many more: %s",
			len(distinct), MinImportedDistinct, advice)
	}
	if p := period(s); p <= len(s)/2 {
		return fmt.Errorf("secret is the same %d characters over and over; a random secret has no such pattern: %s", p, advice)
	}
	return nil
}

// period is the length of the shortest string whose repetition (the last
// copy maybe cut short) makes s: len(s) less its longest proper prefix that
// is also a suffix (Knuth-Morris-Pratt's failure function), in linear time.
func period(s string) int {
	if s == "" {
		return 0
	}
	border := make([]int, len(s)) // border[i]: longest proper prefix of s[:i+1] that is also its suffix
	for i := 1; i < len(s); i++ {
		k := border[i-1]
		for k > 0 && s[i] != s[k] {
			k = border[k-1]
		}
		if s[i] == s[k] {
			k++
		}
		border[i] = k
	}
	return len(s) - border[len(s)-1]
}
