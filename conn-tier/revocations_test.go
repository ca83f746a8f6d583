package conntier

import (
	"testing"
	"time"
)

// A session whose credentials were read before a revocation was heard is
// closed as it opens; one read after is not.
func TestRevocations(t *testing.T) {
	r := newRevocations()
	t0 := time.Now()
	r.add("dev-1", "disabled", t0)
	if reason, ok := r.since("dev-1", t0.Add(-time.Millisecond)); !ok || reason != "disabled" {
		t.Fatalf("checked before the notice: %q %v, want disabled", reason, ok)
	}
	if _, ok := r.since("dev-1", t0.Add(time.Millisecond)); ok {
		t.Fatal("checked after the notice: want it kept open")
	}
	if _, ok := r.since("dev-2", t0.Add(-time.Second)); ok {
		t.Fatal("another device was revoked")
	}
	// Old revocations are forgotten as new ones come.
	r.add("dev-2", "deleted", t0.Add(2*revocationMemory))
	if _, ok := r.heard.Get("dev-1", t0.Add(2*revocationMemory)); ok || r.heard.Len() != 1 {
		t.Fatal("a revocation outlived revocationMemory")
	}
}
