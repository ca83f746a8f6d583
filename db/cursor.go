package db

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/switchboard-iot/switchboard/internal/pgtext"
)

// The cursors of keyset listings (the API's ?cursor= and next, and the
// console's): one codec, so that a cursor the API answered pages the
// console's list too.
//
// A cursor is base64url (unpadded) of: version byte 1, the 8-byte digest
// of the listing and its filter, the last key of the page, then an 8-byte
// checksum (SHA-256) of all that. The checksum is not a secret MAC: an
// HMAC would need a key every edge shares (state to provision and rotate)
// and buys nothing here, since the cursor grants nothing: whoever can list
// can start anywhere with a forged one. The checksum only catches a cursor
// that was cut, edited or mixed up, so that it is refused instead of
// quietly listing from somewhere else.
const (
	cursorVersion  = 1
	CursorDigest   = 8 // the length of a listing's digest
	cursorChecksum = 8
)

// EncodeCursor makes the cursor of the page after last, in the listing
// digest names.
func EncodeCursor(digest []byte, last string) string {
	b := append([]byte{cursorVersion}, digest...)
	b = append(b, last...)
	sum := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(append(b, sum[:cursorChecksum]...))
}

// DecodeCursor checks a cursor against the listing's digest and returns
// the key it continues after. Its errors say what to do, for a 400.
func DecodeCursor(c string, digest []byte) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 1+CursorDigest+1+cursorChecksum {
		return "", errors.New("malformed: use the next value of a listing as it is")
	}
	body, sum := b[:len(b)-cursorChecksum], b[len(b)-cursorChecksum:]
	want := sha256.Sum256(body)
	if subtle.ConstantTimeCompare(sum, want[:cursorChecksum]) != 1 || body[0] != cursorVersion {
		return "", errors.New("damaged: use the next value of a listing as it is")
	}
	if !bytes.Equal(body[1:1+CursorDigest], digest) {
		return "", errors.New("it belongs to a listing with other filters: give the same filters as the page it came from")
	}
	// Not ValidDeviceID: a page may end at an id of the old format
	// (with ':'), which listings show so that it can be found and deleted.
	last := string(body[1+CursorDigest:])
	if len(last) > 128 || !pgtext.Valid(last) {
		return "", errors.New("damaged: use the next value of a listing as it is")
	}
	return last, nil
}

// ListDigest names a listing and its filters in its cursors, so that a
// cursor is refused with other filters (its last key would skip rows of
// those): the first CursorDigest bytes of the SHA-256 of its parts, the
// listing's name first, in a canonical form (the page size is not one of
// them and may change between pages). NUL separates the parts: none can
// hold one.
func ListDigest(parts ...string) []byte {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return sum[:CursorDigest]
}

// Canonical writes a selector for a digest: its terms sorted, so that
// their order does not matter.
func (sel LabelSelector) Canonical() string {
	terms := make([]string, len(sel))
	for i, r := range sel {
		terms[i] = LabelSelector{r}.String()
	}
	slices.Sort(terms)
	return strings.Join(terms, ",")
}

// Digest names a device listing's filter in its cursors.
func (f DeviceFilter) Digest() []byte {
	online := ""
	if f.Online != nil {
		online = strconv.FormatBool(*f.Online)
	}
	parts := []string{"devices", online, f.Node, f.Region, f.Labels.Canonical(), strings.ToLower(f.IDContains)}
	if f.DeltaNonEmpty { // only then: the cursors of other filters stay as they were
		parts = append(parts, "delta=nonempty")
	}
	return ListDigest(parts...)
}

// JobsDigest names the jobs listing (newest first, of one status or all)
// in its cursors, which hold the last job's id.
func JobsDigest(status JobStatus) []byte { return ListDigest("jobs", string(status)) }
