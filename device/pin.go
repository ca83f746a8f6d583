package device

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrPinMismatch is why a dial failed when the node's certificate was not
// the pinned one (Config.Pin): no credentials were sent.
var ErrPinMismatch = errors.New("the node's certificate does not match the pinned SHA-256")

// parsePin reads a certificate fingerprint: the SHA-256 of its DER as hex,
// with or without colons, in any case ("AB:CD:…", the form nodes log and
// scripts/dev prints).
func parsePin(pin string) ([]byte, error) {
	sum, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(pin), ":", ""))
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("pin %q: want a SHA-256 fingerprint, 64 hex digits (colons optional)", pin)
	}
	return sum, nil
}

// pinnedTLS is base (nil: a default config) accepting only the certificate
// whose SHA-256 is sum, whoever issued it: a self-signed node's, say. The
// check runs in the TLS handshake, before the upgrade request carries the
// credentials.
func pinnedTLS(base *tls.Config, sum []byte) *tls.Config {
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	// The chain is not verified (a pinned certificate may be its own
	// issuer); VerifyConnection checks the one certificate that counts.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return ErrPinMismatch
		}
		got := sha256.Sum256(cs.PeerCertificates[0].Raw)
		if !bytes.Equal(got[:], sum) {
			return ErrPinMismatch
		}
		return nil
	}
	return cfg
}
