// A minimal device: answers "echo" with its arguments and reports its
// desired state as applied. The README runs it against scripts/dev.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchboard-iot/switchboard/device"
)

func main() {
	pem, err := os.ReadFile(os.Getenv("SWITCHBOARD_CA")) // the node's certificate to trust
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	d := device.New(device.Config{
		URL:    os.Getenv("SWITCHBOARD_URL"),
		ID:     os.Getenv("SWITCHBOARD_DEVICE_ID"),
		Secret: os.Getenv("SWITCHBOARD_DEVICE_SECRET"),
		TLS:    &tls.Config{RootCAs: roots},
	})
	d.Handle("echo", func(ctx context.Context, args json.RawMessage) (any, error) {
		return map[string]json.RawMessage{"echo": args}, nil
	})
	d.OnDesired(func(desired json.RawMessage, version int64) { _ = d.Report(desired) })
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil { // nil once ctx ends; ErrUnauthorized if refused
		log.Fatal(err)
	}
}
