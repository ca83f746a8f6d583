package loadgen

import (
	"net/netip"
	"slices"
	"testing"
)

func TestParseRate(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]float64{"2000/s": 2000, "3000": 3000, "60/m": 1, "50/100ms": 500, " 7.5/s ": 7.5, "0": 0} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1/s", "10/0s", "10/parsec"} {
		if got, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseSourceAddrs(t *testing.T) {
	t.Parallel()
	got, err := ParseSourceAddrs("127.0.0.2-127.0.0.4, 127.0.1.1,")
	want := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.1.1")}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	if got, err := ParseSourceAddrs(""); err != nil || len(got) != 0 {
		t.Errorf("empty: %v, %v", got, err)
	}
	for _, in := range []string{"127.0.0.300", "127.0.0.9-127.0.0.2", "127.0.0.1-::1", "10.0.0.0-10.1.0.0"} {
		if got, err := ParseSourceAddrs(in); err == nil {
			t.Errorf("ParseSourceAddrs(%q) = %v, want an error", in, got)
		}
	}
}
