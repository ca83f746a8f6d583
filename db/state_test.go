package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/switchboard-iot/switchboard/db"
)

func jsonEqual(t *testing.T, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestDeviceState(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1")
	ctx := context.Background()

	st, err := store.State(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, st.Desired, `{}`)
	jsonEqual(t, st.Delta, `{}`)
	if st.DesiredVersion != 0 || st.ReportedVersion != 0 || st.DesiredUpdatedAt != nil {
		t.Fatalf("a device without state: %+v", st)
	}
	if _, err := store.State(ctx, "nope"); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("State(nope) = %v, want ErrNotFound", err)
	}
	if _, err := store.PatchDesired(ctx, "nope", json.RawMessage(`{"a":1}`), nil); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("PatchDesired(nope) = %v, want ErrNotFound", err)
	}

	// Merge-patch semantics: nested objects merge, null deletes.
	st, err = store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"a":1,"n":{"x":1,"y":2},"gone":true}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err = store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"n":{"y":null,"z":{"deep":null,"k":3}},"gone":null,"arr":[1,null]}`), new(int64(1)))
	if err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, st.Desired, `{"a":1,"n":{"x":1,"z":{"k":3}},"arr":[1,null]}`)
	if st.DesiredVersion != 2 || st.DesiredUpdatedAt == nil {
		t.Fatalf("after two patches: version %d, want 2", st.DesiredVersion)
	}
	// A patch that changes nothing keeps the version.
	if st, err = store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"a":1.0}`), nil); err != nil || st.DesiredVersion != 2 {
		t.Fatalf("a patch changing nothing: version %d, %v; want 2", st.DesiredVersion, err)
	}
	if _, err := store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"a":2}`), new(int64(1))); !errors.Is(err, db.ErrVersionMismatch) {
		t.Fatalf("a stale version: %v, want ErrVersionMismatch", err)
	}
	big := `{"big":"` + strings.Repeat("x", db.MaxStateBytes) + `"}`
	if _, err := store.PatchDesired(ctx, "dev-1", json.RawMessage(big), nil); !errors.Is(err, db.ErrStateTooLarge) {
		t.Fatalf("a patch too large: %v, want ErrStateTooLarge", err)
	}

	// Reports merge in order; the delta is the desired keys reported otherwise.
	changed, tooLarge, err := store.StoreReports(ctx, []db.Report{
		{DeviceID: "dev-1", Patch: json.RawMessage(`{"a":1,"n":{"x":1},"extra":true}`)},
		{DeviceID: "dev-1", Patch: json.RawMessage(`{"extra":null,"arr":[1]}`)},
		{DeviceID: "dev-1", Patch: json.RawMessage(`{"arr":[1]}`)}, // no change: no new version
		{DeviceID: "dev-1", Patch: json.RawMessage(big)},
		{DeviceID: "nope", Patch: json.RawMessage(`{"a":1}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tooLarge, []string{"dev-1"}) {
		t.Fatalf("too large: %v, want [dev-1]", tooLarge)
	}
	if !reflect.DeepEqual(changed, []string{"dev-1", "dev-1"}) {
		t.Fatalf("changed: %v, want dev-1 by the first two reports", changed)
	}
	st, err = store.State(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, st.Reported, `{"a":1,"n":{"x":1},"arr":[1]}`)
	jsonEqual(t, st.Delta, `{"n":{"x":1,"z":{"k":3}},"arr":[1,null]}`)
	if st.ReportedVersion != 2 || st.DesiredVersion != 2 || st.ReportedUpdatedAt == nil {
		t.Fatalf("versions: desired %d reported %d, want 2 and 2", st.DesiredVersion, st.ReportedVersion)
	}

	// The node reads only what is newer than its session has.
	newer, err := store.NewerDesired(ctx, []db.StateCursor{{DeviceID: "dev-1", Version: 1}, {DeviceID: "nope"}})
	if err != nil || len(newer) != 1 || newer[0].Version != 2 {
		t.Fatalf("NewerDesired after 1 = %+v, %v", newer, err)
	}
	if newer, err = store.NewerDesired(ctx, []db.StateCursor{{DeviceID: "dev-1", Version: 2}}); err != nil || len(newer) != 0 {
		t.Fatalf("NewerDesired after 2 = %+v, %v", newer, err)
	}
}

// Two patches naming the same version: one applies, the other is refused.
func TestPatchDesiredConcurrent(t *testing.T) {
	t.Parallel()
	store, _ := setup(t, "dev-1")
	ctx := context.Background()
	if _, err := store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"a":0}`), nil); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		v := int64(1 + 2*round) // each round's patch and its reset make two versions
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() {
				_, errs[i] = store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"a":"`+string(rune('a'+i))+`"}`), &v)
			})
		}
		wg.Wait()
		ok, mismatch := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, db.ErrVersionMismatch):
				mismatch++
			default:
				t.Fatal(err)
			}
		}
		if ok != 1 || mismatch != 1 {
			t.Fatalf("round %d: %d applied, %d refused; want 1 and 1", round, ok, mismatch)
		}
		// The next round's patches change "a" again.
		if _, err := store.PatchDesired(ctx, "dev-1", json.RawMessage(`{"a":0}`), nil); err != nil {
			t.Fatal(err)
		}
	}
}
