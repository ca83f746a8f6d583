package secret

import (
	"errors"
	"strings"
	"testing"
)

func TestCredentialsRoundTrip(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	want := []Credential{{"dev-1", New("")}, {"dev.2_x", New("")}}
	for _, c := range want {
		if err := WriteCredential(&out, c); err != nil {
			t.Fatal(err)
		}
	}
	input := "# provisioned today\n\n" + out.String() + "  id-only  \n"
	var got []Credential
	var lines []int
	err := ScanCredentials(strings.NewReader(input), func(line int, c Credential) error {
		got, lines = append(got, c), append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, Credential{ID: "id-only"})
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("scanned %+v, want %+v", got, want)
	}
	if lines[0] != 3 || lines[2] != 5 {
		t.Fatalf("line numbers %v, want 3, 4, 5", lines)
	}
	stop := errors.New("stop")
	if err := ScanCredentials(strings.NewReader("a\nb\n"), func(int, Credential) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("an error from fn: %v", err)
	}
}
