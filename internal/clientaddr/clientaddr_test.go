package clientaddr

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestParseTrusted(t *testing.T) {
	got, err := ParseTrusted(" 10.0.0.0/8, 192.0.2.1,fdaa::/16 ,, ::ffff:198.51.100.1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.1/32", "fdaa::/16", "198.51.100.1/32"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("entry %d = %s, want %s", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0.1/", "1.2.3"} {
		if _, err := ParseTrusted(bad); err == nil {
			t.Errorf("ParseTrusted(%q) accepted it", bad)
		}
	}
	if tr, err := ParseTrusted(""); err != nil || len(tr) != 0 {
		t.Errorf("ParseTrusted(\"\") = %v, %v; want none", tr, err)
	}
}

func TestFromRequest(t *testing.T) {
	trusted, _ := ParseTrusted("10.0.0.0/8")
	req := func(peer, header string) *http.Request {
		r := &http.Request{RemoteAddr: peer, Header: http.Header{}}
		if header != "" {
			r.Header.Set(Header, header)
		}
		return r
	}
	cases := []struct {
		name, peer, header string
		trusted            Trusted
		want               string
	}{
		{"no proxy trusted: the header is ignored", "10.1.1.1:5000", "203.0.113.9", nil, "10.1.1.1"},
		{"untrusted peer: the header is ignored", "192.0.2.7:5000", "203.0.113.9", trusted, "192.0.2.7"},
		{"trusted peer: the header names the client", "10.1.1.1:5000", "203.0.113.9", trusted, "203.0.113.9"},
		{"trusted peer, IPv6 client", "10.1.1.1:5000", "2001:db8::1", trusted, "2001:db8::1"},
		{"trusted peer, no header", "10.1.1.1:5000", "", trusted, "10.1.1.1"},
		{"trusted peer, junk header", "10.1.1.1:5000", "not-an-ip", trusted, "10.1.1.1"},
		{"trusted peer, a list is not an address", "10.1.1.1:5000", "203.0.113.9, 10.0.0.1", trusted, "10.1.1.1"},
		{"IPv4-mapped peer", "[::ffff:192.0.2.7]:5000", "", nil, "192.0.2.7"},
	}
	for _, tc := range cases {
		got := FromRequest(req(tc.peer, tc.header), tc.trusted)
		if got != netip.MustParseAddr(tc.want) {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
	if got := FromRequest(req("garbage", ""), nil); got.IsValid() {
		t.Errorf("an unreadable peer gave %s, want the zero Addr", got)
	}
}
