// Command switchboard runs Switchboard: the edge (HTTP API), connection
// nodes (device WebSockets), migrations, a local development stack,
// simulated devices and provisioning. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/switchboard-iot/switchboard/app/cli"
)

func main() {
	err := cli.Run(context.Background(), os.Args[1:], os.Getenv, cli.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil && !errors.Is(err, cli.ErrUsage) { // a usage error was printed with the usage
		fmt.Fprintln(os.Stderr, "switchboard:", err)
	}
	// 1 for an error, 2 for a usage error, and more for the API's answers:
	// cli.ExitCode and docs/cli.md list them.
	os.Exit(cli.ExitCode(err))
}
