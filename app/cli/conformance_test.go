package cli_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/switchboard-iot/switchboard/app/cli"
)

// "conformance" refuses a command line it cannot run before it starts
// anything: no device command, a -run that selects nothing or does not
// compile, an argument. (e2e/conformance_test.go runs the suite.)
func TestConformanceCommandLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		usage   bool
		message string
	}{
		{args: nil, usage: true, message: "-device-cmd is required"},
		{args: []string{"-device-cmd", "true", "extra"}, usage: true},
		{args: []string{"-device-cmd", "true", "-run", "no-such-scenario"}, message: "matches no scenario (command, event"},
		{args: []string{"-device-cmd", "true", "-run", "("}, message: "-run: error parsing regexp"},
	} {
		var stderr bytes.Buffer
		err := cli.Run(context.Background(), append([]string{"conformance"}, tc.args...), func(string) string { return "" },
			cli.IO{Stdin: strings.NewReader(""), Stdout: &stderr, Stderr: &stderr})
		if err == nil || errors.Is(err, cli.ErrUsage) != tc.usage {
			t.Errorf("%v: error %v, want a usage error: %v", tc.args, err, tc.usage)
			continue
		}
		if got := err.Error() + stderr.String(); !strings.Contains(got, tc.message) {
			t.Errorf("%v: %q, want it to say %q", tc.args, got, tc.message)
		}
	}
}
