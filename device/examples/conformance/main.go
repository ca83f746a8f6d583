// Command conformance is the Go SDK's conformance device: the device the
// conformance suite ("switchboard conformance", docs/conformance.md) runs.
// It reads its settings from the contract's environment variables, answers
// echo, fail, work and emit, applies its desired state by reporting it
// back, and exits 3 once its credentials are refused.
//
//	switchboard conformance -device-cmd "go run ./device/examples/conformance"
//
// -broken breaks it on purpose, to show that the suite catches it (a
// comma-separated list):
//
//	nojitter    reconnect at once (a 1 ms backoff), in step with the fleet
//	nodedup     a work command interrupted by a dropped session still has
//	            its effect, and its redelivery runs again: two effects
//	nopin       ignore SWITCHBOARD_PIN
//	nowatchdog  wait an hour on a silent node
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchboard-iot/switchboard/device"
)

func main() {
	broken := flag.String("broken", "", "break the device on purpose: nojitter, nodedup, nopin, nowatchdog (comma-separated)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := run(ctx, log, brokenSet(*broken))
	switch {
	case errors.Is(err, device.ErrUnauthorized):
		log.Error("stopping: credentials refused", "err", err)
		os.Exit(3)
	case err != nil:
		log.Error("stopping", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}

func brokenSet(list string) map[string]bool {
	set := map[string]bool{}
	for _, b := range strings.Split(list, ",") {
		if b = strings.TrimSpace(b); b != "" {
			set[b] = true
		}
	}
	return set
}

func run(ctx context.Context, log *slog.Logger, broken map[string]bool) error {
	tlsConfig, err := tlsFromEnv(broken["nopin"])
	if err != nil {
		return err
	}
	cfg := device.Config{
		URL:           os.Getenv("SWITCHBOARD_URL"),
		ID:            os.Getenv("SWITCHBOARD_DEVICE_ID"),
		Secret:        os.Getenv("SWITCHBOARD_DEVICE_SECRET"),
		TLS:           tlsConfig,
		Log:           log,
		MinBackoff:    envMillis("SWITCHBOARD_MIN_BACKOFF_MS"),
		MaxBackoff:    envMillis("SWITCHBOARD_MAX_BACKOFF_MS"),
		ReplacedDelay: envMillis("SWITCHBOARD_REPLACED_DELAY_MS"),
		ReadTimeout:   envMillis("SWITCHBOARD_READ_TIMEOUT_MS"),
		OnConnect:     func() { log.Info("connected") },
		OnDisconnect:  func(err error) { log.Info("disconnected", "err", err) },
		OnDialError:   func(err error) { log.Info("connect failed", "err", err) },
	}
	if broken["nojitter"] {
		cfg.MinBackoff, cfg.MaxBackoff = time.Millisecond, time.Millisecond
	}
	if broken["nowatchdog"] {
		cfg.ReadTimeout = time.Hour
	}
	if cfg.URL == "" || cfg.ID == "" || cfg.Secret == "" {
		return errors.New("set SWITCHBOARD_URL, SWITCHBOARD_DEVICE_ID and SWITCHBOARD_DEVICE_SECRET")
	}
	d := device.New(cfg)
	handle := func(name string, h device.HandlerFunc) {
		d.Handle(name, func(cmdCtx context.Context, args json.RawMessage) (any, error) {
			log.Info("command", "name", name, "args", string(args))
			return h(cmdCtx, args)
		})
	}
	handle("echo", func(_ context.Context, args json.RawMessage) (any, error) {
		return map[string]json.RawMessage{"echo": args}, nil
	})
	handle("fail", func(context.Context, json.RawMessage) (any, error) {
		return nil, errors.New("asked to fail")
	})
	handle("emit", func(cmdCtx context.Context, args json.RawMessage) (any, error) {
		var a struct {
			Name string          `json:"name"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		if a.Data == nil {
			a.Data = json.RawMessage("{}")
		}
		return struct{}{}, d.Event(cmdCtx, a.Name, a.Data)
	})
	handle("work", func(cmdCtx context.Context, args json.RawMessage) (any, error) {
		var a struct {
			MS int64 `json:"ms"`
		}
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		id := device.CommandID(cmdCtx)
		// The work is the device's, not the session's: it goes on if the
		// session drops, and the SDK answers the redelivery from it.
		work := func() {
			select {
			case <-time.After(time.Duration(a.MS) * time.Millisecond):
			case <-ctx.Done():
				return
			}
			emitEffect(ctx, d, log, id)
		}
		if !broken["nodedup"] {
			work()
			return map[string]bool{"done": true}, ctx.Err()
		}
		// Broken: the handler gives up when the session drops, but its
		// work goes on, effect and all; the SDK, told the run was
		// interrupted, runs the redelivery again.
		finished := make(chan struct{})
		go func() { work(); close(finished) }()
		select {
		case <-finished:
			return map[string]bool{"done": true}, nil
		case <-cmdCtx.Done():
			return nil, cmdCtx.Err()
		}
	})
	d.OnDesired(func(desired json.RawMessage, version int64) {
		// Applying is copying: report every desired key with its value.
		log.Info("desired", "version", version, "desired", string(desired))
		if err := d.Report(desired); err != nil {
			log.Error("reporting", "err", err)
		}
	})
	return d.Run(ctx)
}

// emitEffect sends the effect event of the work command id, waiting for a
// session if there is none this moment (after a drop, the next comes within
// the backoff).
func emitEffect(ctx context.Context, d *device.Client, log *slog.Logger, id string) {
	for ctx.Err() == nil {
		err := d.Event(ctx, "effect", map[string]string{"command": id})
		if !errors.Is(err, device.ErrNotConnected) {
			if err != nil {
				log.Error("effect", "err", err)
			}
			return
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// tlsFromEnv trusts SWITCHBOARD_CA (if set) and checks the certificate
// against SWITCHBOARD_PIN (if set, unless ignorePin) during the handshake,
// before any request is sent.
func tlsFromEnv(ignorePin bool) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if file := os.Getenv("SWITCHBOARD_CA"); file != "" {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", file)
		}
	}
	pin := strings.ToLower(strings.ReplaceAll(os.Getenv("SWITCHBOARD_PIN"), ":", ""))
	if pin == "" || ignorePin {
		return cfg, nil
	}
	want, err := hex.DecodeString(pin)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("SWITCHBOARD_PIN: want a SHA-256 fingerprint (64 hex digits, colons optional)")
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no certificate")
		}
		got := sha256.Sum256(cs.PeerCertificates[0].Raw)
		if string(got[:]) != string(want) {
			return fmt.Errorf("certificate fingerprint %X does not match SWITCHBOARD_PIN", got)
		}
		return nil
	}
	return cfg, nil
}

// envMillis reads a number of milliseconds (unset: 0, the SDK's default).
func envMillis(name string) time.Duration {
	ms, err := strconv.ParseInt(os.Getenv(name), 10, 64)
	if err != nil || ms <= 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}
