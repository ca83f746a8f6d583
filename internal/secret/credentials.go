package secret

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Credential is a device id and its secret. Its text form is one
// "id,secret" line: what "switchboard devices import" prints (and reads,
// with or without the secret), what "switchboard device -credentials"
// reads, and what "switchboard dev" writes to devices.csv. Device ids
// cannot hold a comma, so the first one splits the line.
type Credential struct {
	ID     string
	Secret string // empty when a line gave the id alone
}

// String is the credential's line, without the newline.
func (c Credential) String() string { return c.ID + "," + c.Secret }

// WriteCredential writes c as one line.
func WriteCredential(w io.Writer, c Credential) error {
	_, err := fmt.Fprintln(w, c.String())
	return err
}

// ScanCredentials calls fn with each credential of r and its line number.
// Blank lines and lines starting with # are skipped; spaces around the id
// and the secret are dropped. An error from fn stops the scan.
func ScanCredentials(r io.Reader, fn func(line int, c Credential) error) error {
	scanner := bufio.NewScanner(r)
	for n := 1; scanner.Scan(); n++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, secret, _ := strings.Cut(line, ",")
		if err := fn(n, Credential{ID: strings.TrimSpace(id), Secret: strings.TrimSpace(secret)}); err != nil {
			return err
		}
	}
	return scanner.Err()
}
