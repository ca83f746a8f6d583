package db

import (
	"regexp"
	"testing"
)

func TestParseLabelSelector(t *testing.T) {
	good := map[string]string{
		"":                       "",
		"room=kitchen":           "room=kitchen",
		"room==kitchen, fw!=2.1": "room=kitchen,fw!=2.1",
		"example.com/tier,!beta": "example.com/tier,!beta",
		"empty=":                 "empty=",
	}
	for in, want := range good {
		sel, err := ParseLabelSelector(in)
		if err != nil {
			t.Errorf("ParseLabelSelector(%q): %v", in, err)
			continue
		}
		if got := sel.String(); got != want {
			t.Errorf("ParseLabelSelector(%q) = %q, want %q", in, got, want)
		}
	}
	for _, in := range []string{"=kitchen", "room=kit chen", "!", "-room=x", "room=x=y", "a,,b", "room=" + string(make([]byte, 64))} {
		if sel, err := ParseLabelSelector(in); err == nil {
			t.Errorf("ParseLabelSelector(%q) = %v, want an error", in, sel)
		}
	}
}

// selectorSQL is the only shape a selector's SQL takes: fixed text and
// numbered parameters.
var selectorSQL = regexp.MustCompile(`^true( AND (NOT )?d\.labels (@> \$[0-9]+::jsonb|\? \$[0-9]+))*$`)

// FuzzLabelSelector feeds the label selector parser what a client writes
// in ?label= or a job's target. An accepted selector has only valid keys
// and values, reads back the same from its String, and becomes SQL whose
// every value travels as a parameter, never in the statement's text.
func FuzzLabelSelector(f *testing.F) {
	for _, s := range []string{"", "room=kitchen", "room==kitchen,fw!=2.1", "example.com/tier,!beta", "empty=",
		"a=b=c", "!a=b", "=x", "a,,b", "a b=c", "ä=ö", "a=" + string(make([]byte, 70)), "'; DROP TABLE devices; --"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		sel, err := ParseLabelSelector(in)
		if err != nil {
			return
		}
		for _, r := range sel {
			if !ValidLabelKey(r.Key) || !ValidLabelValue(r.Value) {
				t.Fatalf("ParseLabelSelector(%q) accepted %+v", in, r)
			}
		}
		again, err := ParseLabelSelector(sel.String())
		if err != nil || again.String() != sel.String() {
			t.Fatalf("ParseLabelSelector(%q).String() = %q reads back as %v, %v", in, sel.String(), again, err)
		}
		where, args := DeviceFilter{Labels: sel}.where(nil)
		if !selectorSQL.MatchString(where) {
			t.Fatalf("ParseLabelSelector(%q) became the SQL %q: only parameters may vary", in, where)
		}
		if want := len(sel); len(args) != want {
			t.Fatalf("%d requirements gave %d parameters", want, len(args))
		}
	})
}
