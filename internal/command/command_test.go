package command_test

import (
	"encoding/json"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/internal/command"
)

func boolp(b bool) *bool { return &b }

var allStatuses = []command.Status{
	command.Pending, command.Delivered, command.Done, command.Failed, command.Expired, command.Cancelled,
}

func TestStatusValues(t *testing.T) {
	// These strings are the psql contract (commands.status).
	want := []string{"pending", "delivered", "done", "failed", "expired", "cancelled"}
	if !slices.Equal(command.Statuses, allStatuses) {
		t.Errorf("Statuses = %v, want %v", command.Statuses, allStatuses)
	}
	for i, s := range allStatuses {
		if string(s) != want[i] {
			t.Errorf("status %d is %q, want %q", i, s, want[i])
		}
	}
}

func TestEvents(t *testing.T) {
	accepted := command.Event{Seq: 1, Name: "accepted"}
	delivered := command.Event{Seq: 2, Name: "delivered"}
	tests := []struct {
		name string
		cmd  command.Command
		want []command.Event
	}{
		{
			name: "pending",
			cmd:  command.Command{Status: command.Pending},
			want: []command.Event{accepted},
		},
		{
			name: "delivered",
			cmd:  command.Command{Status: command.Delivered},
			want: []command.Event{accepted, delivered},
		},
		{
			name: "done",
			cmd:  command.Command{Status: command.Done, OK: boolp(true), Result: json.RawMessage(`{}`)},
			want: []command.Event{accepted, delivered, {Seq: 3, Name: "reply"}},
		},
		{
			name: "failed, device replied false",
			cmd:  command.Command{Status: command.Failed, OK: boolp(false), Error: "relay stuck"},
			want: []command.Event{accepted, delivered, {Seq: 3, Name: "reply"}},
		},
		{
			name: "failed, no reply within timeout",
			cmd:  command.Command{Status: command.Failed},
			want: []command.Event{accepted, delivered, {Seq: 3, Name: "failed"}},
		},
		{
			name: "expired",
			cmd:  command.Command{Status: command.Expired},
			want: []command.Event{accepted, {Seq: 3, Name: "expired"}},
		},
		{
			name: "cancelled",
			cmd:  command.Command{Status: command.Cancelled, Error: "cancelled"},
			want: []command.Event{accepted, {Seq: 3, Name: "cancelled"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := command.Events(tt.cmd)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Events(status %s, ok %v) = %+v, want %+v", tt.cmd.Status, tt.cmd.OK, got, tt.want)
			}
			// Every stream starts with accepted, Seq strictly increases, and a
			// final status ends the stream with Seq 3.
			if len(got) == 0 || got[0] != accepted {
				t.Errorf("stream does not start with %+v: %+v", accepted, got)
			}
			for i := 1; i < len(got); i++ {
				if got[i].Seq <= got[i-1].Seq {
					t.Errorf("Seq does not increase at %d: %+v", i, got)
				}
			}
			if tt.cmd.Status.Final() && got[len(got)-1].Seq != 3 {
				t.Errorf("final status %s: last event %+v, want Seq 3", tt.cmd.Status, got[len(got)-1])
			}
		})
	}
}

func TestEventNames(t *testing.T) {
	got := []string{command.EventAccepted, command.EventDelivered, command.EventReply, command.EventFailed, command.EventExpired, command.EventCancelled}
	want := []string{"accepted", "delivered", "reply", "failed", "expired", "cancelled"}
	if !slices.Equal(got, want) {
		t.Errorf("event names %v, want %v (the SSE contract)", got, want)
	}
}

func TestFromIsTheStateMachine(t *testing.T) {
	// allowed[to] is the set of statuses a command may leave to reach to.
	allowed := map[command.Status][]command.Status{
		command.Pending:   nil, // nothing moves back to pending
		command.Delivered: {command.Pending},
		command.Done:      {command.Pending, command.Delivered},
		command.Failed:    {command.Pending, command.Delivered},
		command.Expired:   {command.Pending},
		command.Cancelled: {command.Pending},
	}
	for _, to := range allStatuses {
		got := command.From(to)
		for _, from := range allStatuses {
			want := slices.Contains(allowed[to], from)
			if slices.Contains(got, from) != want {
				t.Errorf("%s → %s allowed = %v, want %v (From(%s) = %v)", from, to, !want, want, to, got)
			}
		}
		if len(got) != len(allowed[to]) {
			t.Errorf("From(%s) = %v, want exactly %v", to, got, allowed[to])
		}
		for _, from := range got {
			if from.Final() {
				t.Errorf("From(%s) includes final status %s", to, from)
			}
		}
	}
	if got := command.From("bogus"); len(got) != 0 {
		t.Errorf("From(unknown) = %v, want none", got)
	}
	if got := command.From(""); len(got) != 0 {
		t.Errorf("From(\"\") = %v, want none", got)
	}
}

func TestFinal(t *testing.T) {
	want := map[command.Status]bool{
		command.Pending:   false,
		command.Delivered: false,
		command.Done:      true,
		command.Failed:    true,
		command.Expired:   true,
		command.Cancelled: true,
		"":                false,
		"bogus":           false,
		"DONE":            false,
	}
	for s, w := range want {
		if got := s.Final(); got != w {
			t.Errorf("Status(%q).Final() = %v, want %v", s, got, w)
		}
	}
}

func TestDurationMarshal(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{10 * time.Second, `"10s"`},
		{90 * time.Second, `"1m30s"`},
		{1500 * time.Millisecond, `"1.5s"`},
		{0, `"0s"`},
		// No zero units: time.Duration writes "1h0m0s", "10m0s", "168h0m0s".
		{time.Hour, `"1h"`},
		{10 * time.Minute, `"10m"`},
		{command.MaxTTL, `"168h"`},
		{90 * time.Minute, `"1h30m"`},
		{time.Hour + 5*time.Second, `"1h5s"`},
		{time.Hour + 500*time.Millisecond, `"1h500ms"`},
		{500 * time.Millisecond, `"500ms"`},
		{-time.Hour, `"-1h"`},
		{math.MinInt64, `"-2562047h47m16.854775808s"`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(command.Duration(tt.d))
		if err != nil {
			t.Fatalf("Marshal(%v): %v", tt.d, err)
		}
		if string(b) != tt.want {
			t.Errorf("Marshal(%v) = %s, want %s", tt.d, b, tt.want)
		}
	}
	// As a field of Command, by value.
	b, err := json.Marshal(command.Command{Timeout: command.Duration(10 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	if got := string(fields["timeout"]); got != `"10s"` {
		t.Errorf("Command.Timeout marshals as %s, want \"10s\"", got)
	}
}

func TestDurationUnmarshal(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{`"1m30s"`, 90 * time.Second},
		{`"10s"`, 10 * time.Second},
		{`"250ms"`, 250 * time.Millisecond},
		{`2.5`, 2500 * time.Millisecond},
		{`10`, 10 * time.Second},
		{`0`, 0},
		{` 3 `, 3 * time.Second},
	}
	for _, tt := range tests {
		var d command.Duration
		if err := json.Unmarshal([]byte(tt.in), &d); err != nil {
			t.Errorf("Unmarshal(%s): %v", tt.in, err)
			continue
		}
		if time.Duration(d) != tt.want {
			t.Errorf("Unmarshal(%s) = %v, want %v", tt.in, time.Duration(d), tt.want)
		}
	}
	// null keeps what was there, as encoding/json does for other types.
	d := command.Duration(7 * time.Second)
	if err := json.Unmarshal([]byte(`null`), &d); err != nil || time.Duration(d) != 7*time.Second {
		t.Errorf("Unmarshal(null) = %v, %v; want 7s kept", time.Duration(d), err)
	}
	// As a field of a request body.
	var c command.Command
	if err := json.Unmarshal([]byte(`{"timeout":"1m30s"}`), &c); err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Timeout) != 90*time.Second {
		t.Errorf(`{"timeout":"1m30s"} gives %v, want 1m30s`, time.Duration(c.Timeout))
	}
}

func TestDurationUnmarshalRejects(t *testing.T) {
	for _, in := range []string{`"abc"`, `true`, `"10"`, `""`, `{}`, `[1]`, `"10 s"`, `1e10`, `-9.3e9`, `1e300`} {
		d := command.Duration(7 * time.Second)
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("Unmarshal(%s) = %v, want an error", in, time.Duration(d))
		}
	}
	var c command.Command
	if err := json.Unmarshal([]byte(`{"timeout":"10"}`), &c); err == nil {
		t.Errorf(`{"timeout":"10"} accepted as %v, want an error`, time.Duration(c.Timeout))
	}
}

// A refused duration names its field, however deep, for the edge's
// invalid-duration answer.
func TestDurationError(t *testing.T) {
	var body struct {
		Retry struct {
			Backoff command.Duration `json:"backoff"`
		} `json:"retry"`
	}
	err := json.Unmarshal([]byte(`{"retry":{"backoff":"soon"}}`), &body)
	if field, value, ok := command.DurationError(err); !ok || field != "retry.backoff" || value != `"soon"` {
		t.Errorf("DurationError(%v) = %q, %q, %v; want retry.backoff, \"soon\"", err, field, value, ok)
	}
	if _, _, ok := command.DurationError(json.Unmarshal([]byte(`{"retry":1}`), &body)); ok {
		t.Error("a type error of another field is taken for a duration's")
	}
}

func TestDurationRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{0, time.Nanosecond, 10 * time.Second, command.MaxTimeout, command.MaxTTL,
		time.Hour + time.Nanosecond, 25*time.Hour + 30*time.Second + time.Millisecond, -90 * time.Minute, math.MaxInt64, math.MinInt64} {
		b, err := json.Marshal(command.Duration(d))
		if err != nil {
			t.Fatal(err)
		}
		var got command.Duration
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("Unmarshal(%s): %v", b, err)
		}
		if time.Duration(got) != d {
			t.Errorf("%v → %s → %v", d, b, time.Duration(got))
		}
	}
}
