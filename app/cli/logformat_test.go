package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

func TestLogFormat(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct {
		flag   string
		stderr io.Writer
		want   string
	}{
		{"", &bytes.Buffer{}, logJSON}, // not a terminal: JSON
		{"", pw, logJSON},              // a pipe, with a file descriptor: JSON
		{"text", &bytes.Buffer{}, logText},
		{"TEXT", &bytes.Buffer{}, logText},
		{"json", &bytes.Buffer{}, logJSON},
	} {
		got, err := resolveLogFormat(tc.flag, tc.stderr)
		if err != nil || got != tc.want {
			t.Errorf("resolveLogFormat(%q, %T) = %q, %v; want %q", tc.flag, tc.stderr, got, err, tc.want)
		}
	}
	if _, err := resolveLogFormat("logfmt", &bytes.Buffer{}); err == nil {
		t.Error("-log-format logfmt was accepted")
	}
}

// TestLogFormatFlag runs commands with -log-format and SWITCHBOARD_LOG_FORMAT:
// a bad value is a usage error naming the flag, from either; a good one
// reaches the command's logger.
func TestLogFormatFlag(t *testing.T) {
	run := func(env map[string]string, args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := Run(context.Background(), args, func(k string) string { return env[k] }, IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr})
		return stderr.String(), err
	}
	if out, err := run(nil, "version", "-log-format", "xml"); !errors.Is(err, ErrUsage) || !strings.Contains(out, "-log-format") {
		t.Errorf("-log-format xml: %v\n%s", err, out)
	}
	if out, err := run(map[string]string{"SWITCHBOARD_LOG_FORMAT": "yaml"}, "version"); !errors.Is(err, ErrUsage) || !strings.Contains(out, `"yaml"`) {
		t.Errorf("SWITCHBOARD_LOG_FORMAT=yaml: %v\n%s", err, out)
	}
	if out, err := run(map[string]string{"SWITCHBOARD_LOG_FORMAT": "text"}, "version", "-h"); err != nil || !strings.Contains(out, "SWITCHBOARD_LOG_FORMAT") {
		t.Errorf("-h does not name SWITCHBOARD_LOG_FORMAT: %v\n%s", err, out)
	}

	// The logger a command gets writes the format asked for.
	for _, tc := range []struct {
		env  map[string]string
		args []string
		json bool
	}{
		{nil, nil, true},
		{nil, []string{"-log-format", "text"}, false},
		{map[string]string{"SWITCHBOARD_LOG_FORMAT": "text"}, nil, false},
		{map[string]string{"SWITCHBOARD_LOG_FORMAT": "text"}, []string{"-log-format=json"}, true},
	} {
		var stderr bytes.Buffer
		var got call
		c := cmd[struct{}]{define: func(flags) struct{} { return struct{}{} }, run: func(_ context.Context, _ struct{}, c call) error {
			got = c
			c.log.Info("hello", "device", "d-1")
			return nil
		}}
		env := tc.env
		if err := c.exec(context.Background(), "x", tc.args, call{getenv: func(k string) string { return env[k] }, IO: IO{Stderr: &stderr}}); err != nil {
			t.Fatal(err)
		}
		var line map[string]any
		isJSON := json.Unmarshal(stderr.Bytes(), &line) == nil
		if isJSON != tc.json || (isJSON && (line["msg"] != "hello" || line["device"] != "d-1" || line["level"] != "INFO")) {
			t.Errorf("env %v, args %v (format %q): logged %q", tc.env, tc.args, got.logFormat, stderr.String())
		}
	}
}
