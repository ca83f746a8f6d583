// Command pgcluster starts and stops the private PostgreSQL cluster that
// scripts/test shares between all test packages:
//
//	go run ./scripts/pgcluster start DIR   # prints the cluster's URL
//	go run ./scripts/pgcluster stop DIR
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/switchboard-iot/switchboard/internal/pgcluster"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: pgcluster start|stop DIR")
		os.Exit(2)
	}
	dir := os.Args[2]
	var err error
	switch os.Args[1] {
	case "start":
		var c *pgcluster.Cluster
		if c, err = pgcluster.Start(context.Background(), dir, pgcluster.Options{Fast: true}); err == nil {
			fmt.Println(c.URL)
		}
	case "stop":
		err = pgcluster.StopDir(dir)
	default:
		err = fmt.Errorf("unknown action %q: want start or stop", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgcluster:", err)
		os.Exit(1)
	}
}
