// Package secret makes and checks the credentials of devices and API keys.
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
	"fmt"
)

// MinImportedLength is the shortest secret accepted from outside (bulk
// import). 22 base64 characters carry 128 bits when they are random.
const MinImportedLength = 22

// New returns a fresh random secret with the given prefix (for example "sbk_"
// for API keys, so a leaked key is recognisable in logs and by scanners).
func New(prefix string) string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

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

// CheckImported rejects secrets too short to be random enough.
func CheckImported(s string) error {
	if len(s) < MinImportedLength {
		return fmt.Errorf("secret is %d characters; at least %d random characters are required", len(s), MinImportedLength)
	}
	return nil
}
