package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/oklog/run"

	"github.com/switchboard-iot/switchboard/app"
	"github.com/switchboard-iot/switchboard/app/sim/thermostat"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/secret"
)

// deviceFlags are the flags of "device": simulated thermostats.
type deviceFlags struct {
	url, id, secret, credentials, ca *string
	insecure                         *bool
	telemetry                        *time.Duration
}

func defineDeviceFlags(f flags) deviceFlags {
	return deviceFlags{
		url:         f.string("url", "wss://localhost:8443"+protocol.Path, "the connection node's WebSocket URL", "DEVICE_URL"),
		id:          f.string("id", "", "device id", "DEVICE_ID"),
		secret:      f.string("secret", "", "device secret", "DEVICE_SECRET"),
		credentials: f.string("credentials", "", `file of "id,secret" lines (the output of "devices import"): one simulated device each`, "DEVICE_CREDENTIALS"),
		ca:          f.string("ca", "", "PEM file of the certificate to trust (a node's -cert-out)", "DEVICE_CA"),
		insecure:    f.Bool("insecure", false, "do not verify the node's certificate"),
		telemetry:   f.Duration("telemetry", 30*time.Second, "how often each device reports its temperature (0: never)"),
	}
}

// creds are the simulated devices: a file's, or the one of -id and -secret.
func (df deviceFlags) creds() ([]secret.Credential, error) {
	switch {
	case *df.credentials != "":
		return readCredentials(*df.credentials)
	case *df.id != "" && *df.secret != "":
		return []secret.Credential{{ID: *df.id, Secret: *df.secret}}, nil
	}
	return nil, errors.New(`no device credentials: give -id and -secret, or -credentials FILE of "id,secret" lines`)
}

func runDevice(ctx context.Context, df deviceFlags, c call) error {
	creds, err := df.creds()
	if err != nil {
		return err
	}
	tlsCfg, err := certs.Client(*df.ca, *df.insecure)
	if err != nil {
		return err
	}
	c.log.Info("simulating devices", "devices", len(creds), "url", *df.url)
	var g run.Group
	actors.Add(&g, ctx, app.UntilSignal)
	actors.Add(&g, ctx, func(ctx context.Context) error { return simulate(ctx, creds, *df.url, tlsCfg, *df.telemetry, c.log) })
	return g.Run()
}

// simulate runs a thermostat per credential until ctx ends. A device whose
// credentials are refused stops alone; the others carry on.
func simulate(ctx context.Context, creds []secret.Credential, url string, tlsCfg *tls.Config, telemetry time.Duration, log *slog.Logger) error {
	var wg sync.WaitGroup
	for _, c := range creds {
		t := thermostat.New(device.Config{URL: url, ID: c.ID, Secret: c.Secret, TLS: tlsCfg, Log: log})
		wg.Go(func() {
			if err := t.Run(ctx, telemetry); err != nil {
				log.Error("simulated device stopped", "device", c.ID, "err", err)
			}
		})
	}
	wg.Wait()
	return nil
}

// readCredentials reads a file of "id,secret" lines.
func readCredentials(path string) ([]secret.Credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var creds []secret.Credential
	err = secret.ScanCredentials(f, func(line int, c secret.Credential) error {
		if c.Secret == "" {
			return fmt.Errorf("%s:%d: want id,secret", path, line)
		}
		creds = append(creds, c)
		return nil
	})
	return creds, err
}
