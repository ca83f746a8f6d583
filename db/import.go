package db

import (
	"bytes"
	"context"
	"fmt"

	"github.com/switchboard-iot/switchboard/internal/secret"
)

// Import checks the lines of a bulk provisioning, "switchboard devices
// import" and POST /v1/devices:import alike, as they come: one set of
// rules, and one wording of what breaks them.
type Import struct {
	seen map[string]int // id → line: an id given twice would get two secrets, one of them wrong
}

// ImportLine is a device to provision, checked.
type ImportLine struct {
	Line int
	Credential
	Secret string // the secret: the one the line gave, or a new one; shown once stored
	Given  bool   // the line gave the secret
}

// NewImport starts an import.
func NewImport() *Import { return &Import{seen: make(map[string]int)} }

// Add checks line n's credential (and its labels, which the caller
// checked) and gives it a secret when it has none. The error names the
// line.
func (im *Import) Add(n int, c secret.Credential, labels map[string]string) (ImportLine, error) {
	if !ValidDeviceID(c.ID) {
		return ImportLine{}, fmt.Errorf("line %d: device id %q: want %s", n, c.ID, DeviceIDFormat)
	}
	if first, dup := im.seen[c.ID]; dup {
		return ImportLine{}, fmt.Errorf("line %d: device id %q is also on line %d", n, c.ID, first)
	}
	l := ImportLine{Line: n, Secret: c.Secret, Given: c.Secret != ""}
	if l.Given {
		if err := secret.CheckImported(c.Secret); err != nil {
			return ImportLine{}, fmt.Errorf("line %d (%s): %w", n, c.ID, err)
		}
	} else {
		l.Secret = secret.New("")
	}
	im.seen[c.ID] = n
	l.Credential = Credential{ID: c.ID, SecretHash: secret.Hash(l.Secret), Labels: labels}
	return l, nil
}

// ImportDevices adds the lines' devices in one statement (AddDevices).
// Ids that exist are left as they are, so an import can be run again:
// they are returned, each with whether the device's secret is the one its
// line gave (a retry of an import whose answer was lost).
func (s *Store) ImportDevices(ctx context.Context, lines []ImportLine) (existing map[string]bool, err error) {
	creds := make([]Credential, len(lines))
	for i, l := range lines {
		creds[i] = l.Credential
	}
	ids, err := s.AddDevices(ctx, creds)
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	stored, err := s.ManyDeviceCredentials(ctx, ids)
	if err != nil {
		return nil, err
	}
	existing = make(map[string]bool, len(ids))
	for _, id := range ids {
		existing[id] = false
	}
	for _, l := range lines {
		if _, ok := existing[l.ID]; ok && l.Given {
			existing[l.ID] = bytes.Equal(stored[l.ID].SecretHash, l.SecretHash)
		}
	}
	return existing, nil
}
