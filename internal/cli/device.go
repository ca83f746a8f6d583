package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/oklog/run"

	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/thermostat"
)

// credential is one device's id and secret.
type credential struct{ id, secret string }

func runDevice(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	f := newFlags("device", getenv, stdio)
	url := f.string("url", "wss://localhost:8443"+protocol.Path, "the connection node's WebSocket URL", "DEVICE_URL")
	id := f.string("id", "", "device id", "DEVICE_ID")
	devSecret := f.string("secret", "", "device secret", "DEVICE_SECRET")
	credsFile := f.string("credentials", "", `file of "id,secret" lines (the output of "devices import"): one simulated device each`, "DEVICE_CREDENTIALS")
	caFile := f.string("ca", "", "PEM file of the certificate to trust (a node's -cert-out)", "DEVICE_CA")
	insecure := f.Bool("insecure", false, "do not verify the node's certificate")
	telemetry := f.Duration("telemetry", 30*time.Second, "how often each device reports its temperature (0: never)")
	if err := f.parse(args); err != nil {
		return err
	}
	var creds []credential
	switch {
	case *credsFile != "":
		var err error
		if creds, err = readCredentials(*credsFile); err != nil {
			return err
		}
	case *id != "" && *devSecret != "":
		creds = []credential{{*id, *devSecret}}
	default:
		return errors.New(`no device credentials: give -id and -secret, or -credentials FILE of "id,secret" lines`)
	}
	tlsCfg, err := clientTLS(*caFile, *insecure)
	if err != nil {
		return err
	}
	log.Info("simulating devices", "devices", len(creds), "url", *url)
	return runProcess(ctx, func(g *run.Group, ctx context.Context) {
		actors.Add(g, ctx, func(ctx context.Context) error {
			return simulate(ctx, creds, *url, tlsCfg, *telemetry, log)
		})
	})
}

// simulate runs a thermostat per credential until ctx ends. A device whose
// credentials are refused stops alone; the others carry on.
func simulate(ctx context.Context, creds []credential, url string, tlsCfg *tls.Config, telemetry time.Duration, log *slog.Logger) error {
	var wg sync.WaitGroup
	for _, c := range creds {
		t := thermostat.New(device.Config{URL: url, ID: c.id, Secret: c.secret, TLS: tlsCfg, Log: log})
		wg.Go(func() {
			if err := t.Run(ctx, telemetry); err != nil {
				log.Error("simulated device stopped", "device", c.id, "err", err)
			}
		})
	}
	wg.Wait()
	return nil
}

func readCredentials(path string) ([]credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var creds []credential
	scanner := bufio.NewScanner(f)
	for n := 1; scanner.Scan(); n++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, secret, ok := strings.Cut(line, ",")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want id,secret", path, n)
		}
		creds = append(creds, credential{strings.TrimSpace(id), strings.TrimSpace(secret)})
	}
	return creds, scanner.Err()
}

// clientTLS trusts caFile when given, else the system roots.
func clientTLS(caFile string, insecure bool) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: insecure} //nolint:gosec // only on request, for trying things out
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate found", caFile)
		}
	}
	return cfg, nil
}
