package authguard

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestFailuresThrottleTheirSource(t *testing.T) {
	g := New(Config{FailureRate: 0.001, FailureBurst: 3})
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	for i := range 3 {
		if v, _ := g.Admit(a, fmt.Sprint("wrong-", i)); v != Check {
			t.Fatalf("attempt %d: verdict %d, want Check", i+1, v)
		}
		g.Failed(a, fmt.Sprint("wrong-", i))
	}
	v, retry := g.Admit(a, "another")
	if v != Throttle || retry <= 0 {
		t.Fatalf("after 3 failures: verdict %d, retry %v; want Throttle with a delay", v, retry)
	}
	if v, _ := g.Admit(b, "another"); v != Check {
		t.Fatalf("another address: verdict %d, want Check", v)
	}
}

func TestFailedCredentialIsRemembered(t *testing.T) {
	g := New(Config{FailureBurst: 100})
	a := netip.MustParseAddr("192.0.2.1")
	g.Failed(a, "device:ghost")
	if v, _ := g.Admit(a, "device:ghost", "device:ghost:secret"); v != Refuse {
		t.Fatalf("verdict %d, want Refuse", v)
	}
	// From anywhere: the credential failed, not the address.
	if v, _ := g.Admit(netip.MustParseAddr("2001:db8::1"), "device:other", "device:ghost"); v != Refuse {
		t.Fatalf("verdict %d, want Refuse", v)
	}
	if v, _ := g.Admit(a, "device:real"); v != Check {
		t.Fatalf("verdict %d for an untried credential, want Check", v)
	}
}

// An IPv6 subscriber is one source across its /64.
func TestIPv6BySlash64(t *testing.T) {
	g := New(Config{FailureRate: 0.001, FailureBurst: 2})
	g.Failed(netip.MustParseAddr("2001:db8:1:2::1"), "x")
	g.Failed(netip.MustParseAddr("2001:db8:1:2:ffff::9"), "y")
	if v, _ := g.Admit(netip.MustParseAddr("2001:db8:1:2::77"), "z"); v != Throttle {
		t.Fatalf("verdict %d, want Throttle for the same /64", v)
	}
	if v, _ := g.Admit(netip.MustParseAddr("2001:db8:1:3::1"), "z"); v != Check {
		t.Fatalf("verdict %d, want Check for another /64", v)
	}
}

func TestAddressLimiterOff(t *testing.T) {
	g := New(Config{FailureRate: -1})
	a := netip.MustParseAddr("192.0.2.1")
	for i := range 100 {
		g.Failed(a, fmt.Sprint(i))
	}
	if v, _ := g.Admit(a, "new"); v != Check {
		t.Fatalf("verdict %d with the limiter off, want Check", v)
	}
}

func TestRememberExpires(t *testing.T) {
	g := New(Config{Remember: time.Nanosecond})
	a := netip.MustParseAddr("192.0.2.1")
	g.Failed(a, "x")
	deadline := time.Now().Add(time.Second)
	for {
		if v, _ := g.Admit(a, "x"); v == Check {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a failure remembered for 1ns is still refused after 1s")
		}
	}
}
