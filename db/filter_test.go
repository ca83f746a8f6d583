package db

import "testing"

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
