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
	switch {
	case errors.Is(err, cli.ErrUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "switchboard:", err)
		os.Exit(1)
	}
}
