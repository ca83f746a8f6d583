package command_test

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/internal/command"
	"github.com/switchboard-iot/switchboard/internal/testkit/fuzzcheck"
)

// FuzzDuration feeds a command request's "timeout" or "ttl" value, as the
// edge's JSON decoder hands it over: a duration it accepts is the one the
// client wrote, and survives Marshal and Unmarshal.
func FuzzDuration(f *testing.F) {
	for _, s := range []string{
		`"10s"`, `"1m30s"`, `"1.5h"`, `"-5s"`, `"0"`, `""`, `"10"`, `"soon"`, `"9223372036854775807ns"`,
		`"9223372036854775808ns"`, `"2562047h47m16.854775807s"`, `"-2562047h47m16.854775808s"`,
		`10`, `2.5`, `-1`, `0`, `-0`, `1e-10`, `1e9`, `9.3e9`, `1e10`, `-9.3e9`, `1e300`, `1e400`,
		`null`, ` 3 `, `true`, `{}`, `[1]`, `"\u0031\u0073"`, `NaN`, `Inf`, `0x10`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Called directly, with what encoding/json would never pass: no panic.
		var direct command.Duration
		_ = direct.UnmarshalJSON(b)

		const before = command.Duration(7 * time.Second)
		d := before
		var err error
		fuzzcheck.Allocs(t, len(b), func() { err = json.Unmarshal(b, &d) })
		if err != nil {
			if d != before {
				t.Fatalf("Unmarshal(%q) failed (%v) but changed the duration to %v", b, err, time.Duration(d))
			}
			return
		}
		v := bytes.TrimSpace(b)
		switch {
		case string(v) == "null":
			if d != before {
				t.Fatalf("Unmarshal(null) changed the duration to %v", time.Duration(d))
			}
		case v[0] == '"':
			var s string
			_ = json.Unmarshal(v, &s)
			if want, err := time.ParseDuration(s); err != nil || time.Duration(d) != want {
				t.Fatalf("Unmarshal(%q) = %v, but ParseDuration(%q) = %v, %v", b, time.Duration(d), s, want, err)
			}
		default:
			// A number of seconds: the duration is that many, to the
			// nanosecond, or the number is refused.
			secs, _ := strconv.ParseFloat(string(v), 64)
			want := secs * float64(time.Second)
			if want >= math.MaxInt64 || want < math.MinInt64 {
				t.Fatalf("Unmarshal(%q) = %v, but %g ns is beyond a time.Duration", b, time.Duration(d), want)
			}
			if math.Abs(float64(d)-want) > 1 {
				t.Fatalf("Unmarshal(%q) = %v (%d ns), want %g ns", b, time.Duration(d), int64(d), want)
			}
		}

		out, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("Marshal(%v): %v", time.Duration(d), err)
		}
		var back command.Duration
		if err := json.Unmarshal(out, &back); err != nil || back != d {
			t.Fatalf("%v marshals as %s, which reads back as %v, %v", time.Duration(d), out, time.Duration(back), err)
		}
	})
}
