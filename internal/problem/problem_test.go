package problem_test

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/internal/problem"
)

func TestAllSlugsDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, pt := range problem.All() {
		if seen[pt.Slug()] {
			t.Errorf("problem type %q is declared twice", pt.Slug())
		}
		seen[pt.Slug()] = true
	}
	if !seen[problem.NotFound.Slug()] || !seen[problem.UnsupportedSubprotocol.Slug()] {
		t.Errorf("All() misses declared types: %v", seen)
	}
}

func TestWriteRetryAfter(t *testing.T) {
	rec := httptest.NewRecorder()
	problem.NodeFull.WriteRetryAfter(rec, "connect to another node", 1500*time.Millisecond)
	h := rec.Header()
	if rec.Code != 503 || h.Get("Content-Type") != "application/problem+json" || h.Get("Cache-Control") != "no-store" || h.Get("Retry-After") != "2" {
		t.Errorf("status %d, headers %v; want 503, application/problem+json, no-store and Retry-After 2", rec.Code, h)
	}
	var p problem.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	want := problem.Problem{Type: "https://switchboard.dev/problems/node-full", Title: "Node is full", Status: 503, Detail: "connect to another node"}
	if p != want {
		t.Errorf("body %+v, want %+v", p, want)
	}
}
