package conformance

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/switchboard-iot/switchboard/app"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/actors"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
	"github.com/switchboard-iot/switchboard/internal/secret"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// The nodes the suite runs. Devices reach a and b through fronts; strict
// has a small message rate, so that a few events earn a 4029.
const (
	nodeA      = "node-a"
	nodeB      = "node-b"
	nodeStrict = "node-strict"
)

// Node tuning: pings every second (devices may set a short read timeout),
// no rebalancing of its own (the suite moves devices itself), and connects
// as often as the scenarios need.
const (
	pingInterval = time.Second
	strictRate   = 0.5 // messages a second on node-strict
	strictBurst  = 2
)

// system is the Switchboard the suite runs: a database (on a private
// cluster unless given one), one process holding an edge and three nodes
// that share one self-signed certificate, an API key, and an impostor
// certificate for the pin scenario.
type system struct {
	dir     string // the work folder: database, certificates, device logs
	log     *slog.Logger
	cluster *pgcluster.Cluster // nil when the database was given
	proc    *app.Process
	store   *db.Store
	tls     *certs.TLS
	stop    context.CancelFunc
	task    *actors.Task

	api         *api
	nodes       map[string]*conntier.Node
	nodeAddrs   map[string]string // host:port
	nodeTLS     *tls.Config       // a client config that trusts the node certificate
	fingerprint string            // SHA-256 of the node certificate, AB:CD:…
	caFile      string            // PEM: the node certificate
	pinCAFile   string            // PEM: the node certificate and the impostor's
	impostor    *tls.Config       // a server config with the impostor certificate
}

// startSystem starts it all in dir. databaseURL, if set, is an empty or
// migrated database of the suite's own; else a private cluster starts in
// dir/pg.
func startSystem(ctx context.Context, dir, databaseURL string, log *slog.Logger) (_ *system, err error) {
	s := &system{dir: dir, log: log, nodes: map[string]*conntier.Node{}, nodeAddrs: map[string]string{}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if databaseURL == "" {
		if s.cluster, err = pgcluster.Start(ctx, filepath.Join(dir, "pg"), pgcluster.Options{Fast: true}); err != nil {
			return nil, fmt.Errorf("starting PostgreSQL: %w", err)
		}
		if databaseURL, err = s.cluster.CreateDatabase(ctx, "switchboard"); err != nil {
			return nil, err
		}
	}
	if s.proc, err = app.Open(ctx, databaseURL, log); err != nil {
		return nil, err
	}
	s.store = s.proc.Store
	if err := db.Migrate(ctx, s.proc.Pool, log); err != nil {
		return nil, err
	}
	key := secret.New("sbk_")
	if _, err := s.store.AddAPIKey(ctx, db.NewAPIKey{Name: "conformance", KeyHash: secret.Hash(key)}); err != nil {
		return nil, err
	}
	if s.tls, err = s.proc.TLS(ctx, certs.Config{Mode: certs.ModeSelfSigned}); err != nil {
		return nil, err
	}
	s.fingerprint = s.tls.Fingerprint
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.tls.PEM)
	s.nodeTLS = &tls.Config{RootCAs: roots}
	impostorPEM, impostor, err := impostorCertificate()
	if err != nil {
		return nil, err
	}
	s.impostor = &tls.Config{Certificates: []tls.Certificate{impostor}}
	s.caFile, s.pinCAFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-and-impostor.pem")
	if err := os.WriteFile(s.caFile, s.tls.PEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.pinCAFile, append(append([]byte{}, s.tls.PEM...), impostorPEM...), 0o644); err != nil {
		return nil, err
	}

	edgeLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	serveEdge, _, err := s.proc.Edge(edge.Config{ID: edge.NewID("conformance")}, maintenance.Config{SweepInterval: 200 * time.Millisecond}, certs.Config{}, edgeLn)
	if err != nil {
		edgeLn.Close()
		return nil, err
	}
	parts := []app.Server{serveEdge}
	for _, id := range []string{nodeA, nodeB, nodeStrict} {
		cfg := conntier.Config{
			Node:               db.Node{ID: id, Region: "conformance"},
			PingInterval:       pingInterval,
			RebalanceInterval:  -1,
			DeviceConnectRate:  50,
			DeviceConnectBurst: 50,
			DrainWindow:        100 * time.Millisecond,
			DrainTimeout:       2 * time.Second,
		}
		if id == nodeStrict {
			cfg.DeviceRate, cfg.DeviceBurst = strictRate, strictBurst
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		serve, node, err := s.proc.Node(cfg, s.tls, ln)
		if err != nil {
			ln.Close()
			return nil, err
		}
		s.nodes[id], s.nodeAddrs[id] = node, ln.Addr().String()
		parts = append(parts, serve)
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	s.task = actors.Go(func() error { return s.proc.Run(runCtx, parts...) })
	s.api = &api{base: "http://" + edgeLn.Addr().String(), key: key, client: &http.Client{Timeout: 70 * time.Second}}

	// Ready: the edge answers with the key, and every node holds its lease.
	err = poll(ctx, 30*time.Second, func() (bool, error) {
		select {
		case <-s.task.Done():
			return false, errors.New("the system stopped while starting; see its log")
		default:
		}
		for _, n := range s.nodes {
			if n.NotReady(ctx) != "" {
				return false, nil
			}
		}
		_, err := s.api.device(ctx, "none")
		return err == nil || errors.Is(err, errNotFound), nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for the edge and nodes: %w", err)
	}
	return s, nil
}

// close stops what started, in reverse.
func (s *system) close() {
	if s.stop != nil {
		s.stop()
		if err := s.task.Wait(); err != nil {
			s.log.Error("stopping the system", "err", err)
		}
	}
	if s.tls != nil {
		s.tls.Stop()
	}
	if s.proc != nil {
		s.proc.Close()
	}
	if s.cluster != nil {
		if err := s.cluster.Stop(); err != nil {
			s.log.Error("stopping PostgreSQL", "err", err)
		}
	}
}

// addDevice provisions a device and returns its secret.
func (s *system) addDevice(ctx context.Context, id string) (string, error) {
	devSecret := secret.New("")
	_, err := s.store.AddDevices(ctx, []db.Credential{{ID: id, SecretHash: secret.Hash(devSecret)}})
	return devSecret, err
}

// impostorCertificate makes a self-signed certificate for the names the
// node certificate covers, with a key of its own: trusted by the pin
// scenario's device (its CA file holds it), it differs from the pin.
func impostorCertificate() ([]byte, tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "impostor"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// poll calls cond until it holds, fails, or limit passes (an error saying
// so). For what has no signal to wait on: rows, a process's connections.
func poll(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
