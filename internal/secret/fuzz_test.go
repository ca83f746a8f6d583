package secret

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/internal/testkit/fuzzcheck"
)

// FuzzScanCredentials feeds ScanCredentials what "switchboard devices
// import" reads on stdin and "switchboard device -credentials" reads from
// a file: every credential it yields is trimmed and can be written back as
// the same line, and an error from fn stops the scan.
func FuzzScanCredentials(f *testing.F) {
	for _, s := range []string{
		"dev-1,sk_0123456789abcdefghijkl\ndev-2\n",
		"# provisioned today\n\n  id-only  \r\nx , y \n",
		"a,b,c\n,secret\n,\n#,x\n \t# comment\n",
		"no newline at the end",
		"\r\n\r\n,\r",
		"\xff\xfe,\x00\n\u00a0dev\u00a0,\u2028s\u2028\n",
		strings.Repeat("x", 70<<10) + "\nafter,the long line\n",
	} {
		f.Add([]byte(s), uint8(len(s)%3))
	}
	f.Fuzz(func(t *testing.T, data []byte, stopAt uint8) {
		var got []Credential
		var err error
		last := 0
		fuzzcheck.Allocs(t, len(data), func() {
			err = ScanCredentials(bytes.NewReader(data), func(line int, c Credential) error {
				if line <= last {
					t.Fatalf("line %d after line %d", line, last)
				}
				last = line
				got = append(got, c)
				return nil
			})
		})
		if err != nil && !errors.Is(err, bufio.ErrTooLong) {
			t.Fatalf("ScanCredentials(%q): %v", data, err)
		}
		for _, c := range got {
			if c.ID != strings.TrimSpace(c.ID) || c.Secret != strings.TrimSpace(c.Secret) ||
				strings.ContainsAny(c.ID, ",\n") || strings.ContainsRune(c.Secret, '\n') ||
				strings.HasPrefix(c.ID, "#") {
				t.Fatalf("ScanCredentials(%q) gave %q", data, c)
			}
		}
		if err != nil {
			return
		}

		// Written back, the credentials read the same.
		var out bytes.Buffer
		for _, c := range got {
			if err := WriteCredential(&out, c); err != nil {
				t.Fatal(err)
			}
		}
		var again []Credential
		if err := ScanCredentials(&out, func(_ int, c Credential) error { again = append(again, c); return nil }); err != nil {
			t.Fatalf("rescanning %q: %v", out.String(), err)
		}
		if len(again) != len(got) {
			t.Fatalf("%q gave %q; written back, %q", data, got, again)
		}
		for i := range got {
			if again[i] != got[i] {
				t.Fatalf("%q gave %q; written back, %q", data, got, again)
			}
		}

		// An error from fn ends the scan at once.
		stop := errors.New("stop")
		calls := 0
		err = ScanCredentials(bytes.NewReader(data), func(int, Credential) error {
			calls++
			if calls == int(stopAt) {
				return stop
			}
			return nil
		})
		wantCalls, wantStop := len(got), false
		if n := int(stopAt); n > 0 && n <= len(got) {
			wantCalls, wantStop = n, true
		}
		if calls != wantCalls || errors.Is(err, stop) != wantStop {
			t.Fatalf("stopping at %d of %d credentials: %d calls, error %v", stopAt, len(got), calls, err)
		}
	})
}
