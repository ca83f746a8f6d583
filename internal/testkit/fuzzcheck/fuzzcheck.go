// Package fuzzcheck holds what every fuzz target of a decoder of untrusted
// input asserts besides its own properties.
package fuzzcheck

import (
	"runtime/metrics"
	"testing"
)

// Allocation budget of a decode: a fixed allowance plus so many bytes per
// byte of input. Decoding copies its input a few times (validation, then
// values); what must never happen is an allocation out of proportion to
// the input, driven by a length or count the input merely claims.
const (
	allocBase    = 1 << 20
	allocPerByte = 64
)

var heapAllocs = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

// Allocs runs decode and fails t if it allocated more than the budget for
// an input of inputLen bytes. The runtime counts small allocations a span
// at a time, so the measure is coarse (tens of KiB); the fixed allowance
// covers that.
func Allocs(t testing.TB, inputLen int, decode func()) {
	t.Helper()
	metrics.Read(heapAllocs)
	before := heapAllocs[0].Value.Uint64()
	decode()
	metrics.Read(heapAllocs)
	used := heapAllocs[0].Value.Uint64() - before
	if budget := uint64(allocBase + allocPerByte*inputLen); used > budget {
		t.Fatalf("decoding %d bytes allocated %d bytes, more than the %d allowed", inputLen, used, budget)
	}
}
