package e2e

// ACME end to end, with no internet: Pebble (Let's Encrypt's test CA) runs
// beside the test; two connection nodes sharing the database obtain one
// certificate between them, renew it once between them, and serve it to a
// device that trusts only Pebble's root.

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/db/dbtest"
	"github.com/switchboard-iot/switchboard/device"
	"github.com/switchboard-iot/switchboard/internal/certs"
)

// acmeSetup is an edge, two nodes and Pebble, with the challenge type the
// nodes use: HTTP-01 validations go to the edge's port, TLS-ALPN-01 ones to
// node A's.
type acmeSetup struct {
	sys    *testsys.System
	pebble *testsys.Pebble
	nodes  []*testsys.Node
	addrs  []string
	edge   *testsys.Edge
	roots  *x509.CertPool // Pebble's issuing root
}

func startACME(t *testing.T, challenge string, validity time.Duration, renewWindow float64) *acmeSetup {
	t.Helper()
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	port := func(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
	edgeLn, aLn, bLn := listen(), listen(), listen()
	pebble := testsys.StartPebble(t, testsys.PebbleOptions{HTTPPort: port(edgeLn), TLSPort: port(aLn), Validity: validity})
	sys := testsys.New(t)
	acme := certs.Config{
		Mode: certs.ModeACME, Domains: []string{"localhost"},
		CA: pebble.Dir, CARoot: pebble.RootFile, Email: "ops@example.com", Challenge: challenge,
		HTTPPort: port(edgeLn), TLSPort: port(aLn), RenewCheck: time.Second, RenewWindow: renewWindow,
	}
	s := &acmeSetup{sys: sys, pebble: pebble, edge: sys.StartEdgeACME(t, "acme-edge", acme, edgeLn, nil)}
	for i, ln := range []net.Listener{aLn, bLn} {
		s.addrs = append(s.addrs, ln.Addr().String())
		s.nodes = append(s.nodes, sys.StartNodeTLS(t, fmt.Sprintf("acme-node-%c", 'a'+i), acme, ln, nil))
	}
	s.roots = pebble.IssuingRoots(t)
	return s
}

// serials waits until every node serves a certificate for localhost that
// verifies against Pebble's root, other than skip, and returns their
// serial numbers.
func (s *acmeSetup) serials(t *testing.T, skip string) []string {
	t.Helper()
	out := make([]string, len(s.addrs))
	testsys.EventuallyWithin(t, time.Minute, "every node to serve a certificate from Pebble", func() bool {
		for i, addr := range s.addrs {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			leaf, err := testsys.ServedCertificate(ctx, addr, "localhost", s.roots)
			cancel()
			if err != nil || leaf.SerialNumber.String() == skip {
				return false
			}
			if _, ecdsaKey := leaf.PublicKey.(*ecdsa.PublicKey); !ecdsaKey || !slices.Contains(leaf.DNSNames, "localhost") {
				t.Fatalf("node %d serves %v for %v; want an ECDSA certificate for localhost", i, leaf.PublicKeyAlgorithm, leaf.DNSNames)
			}
			out[i] = leaf.SerialNumber.String()
		}
		return true
	})
	return out
}

// Two nodes, HTTP-01 answered by the edge (as on Fly): one issuance, one
// renewal, the same certificate on both nodes, and a device that trusts
// only Pebble's root connects.
func TestACMEHTTP01ThroughTheEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Pebble")
	}
	t.Parallel()
	// Certificates of 30 s, renewed with half their life left: the
	// renewal comes about 15 s in, the next 15 s after that.
	s := startACME(t, certs.ChallengeHTTP, 30*time.Second, 0.5)

	first := s.serials(t, "")
	if first[0] != first[1] {
		t.Fatalf("the nodes serve different certificates: %v", first)
	}
	if n := s.pebble.Issued(); n != 1 {
		t.Fatalf("Pebble issued %d certificates for two nodes, want 1", n)
	}
	if !s.edgeAnsweredChallenges(t) {
		t.Fatal("the edge answered no HTTP-01 challenge, yet the certificate was issued")
	}
	// A device connects, verifying the node against Pebble's root only.
	key := s.sys.APIKey(t)
	devSecret := s.sys.AddDevice(t, "acme-dev")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := device.New(device.Config{
		URL: "wss://localhost:" + portOf(s.addrs[0]) + "/v1/connect", ID: "acme-dev", Secret: devSecret,
		TLS: &tls.Config{RootCAs: s.roots}, Log: dbtest.Logger(), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	for name, h := range whoami("acme-dev") {
		d.Handle(name, h)
	}
	devCtx, stopDevice := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- d.Run(devCtx) }()
	defer func() { stopDevice(); <-ran }()
	resp := post(t, ctx, s.edge.URL, key, "acme-dev", "?wait=20s", "", `{"name":"whoami"}`)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a command to a device on an ACME node: %d", resp.StatusCode)
	}

	// The renewal: one more issuance for both nodes, which then serve it.
	renewed := s.serials(t, first[0])
	if renewed[0] != renewed[1] {
		t.Fatalf("after the renewal the nodes serve different certificates: %v", renewed)
	}
	if n := s.pebble.Issued(); n != 2 {
		t.Fatalf("Pebble issued %d certificates after one renewal by two nodes, want 2", n)
	}
	s.wantExpiryMetric(t)
}

// wantExpiryMetric waits until each node's certificate expiry series says
// when the certificate it serves expires: the renewed one, after a renewal.
func (s *acmeSetup) wantExpiryMetric(t *testing.T) {
	t.Helper()
	for i, node := range s.nodes {
		series := fmt.Sprintf(`switchboard_conn_certificate_expiry_timestamp_seconds{node=%q}`, node.ID)
		testsys.EventuallyWithin(t, 30*time.Second, series+" to be the served certificate's expiry", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			leaf, err := testsys.ServedCertificate(ctx, s.addrs[i], "localhost", s.roots)
			if err != nil {
				return false
			}
			return node.Metric(t, series) == float64(leaf.NotAfter.Unix())
		})
	}
}

// A node that listens on the port the CA validates (443 in production)
// answers TLS-ALPN-01 itself, for itself or any node of the deployment.
func TestACMETLSALPN01(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Pebble")
	}
	t.Parallel()
	s := startACME(t, certs.ChallengeTLSALPN, 24*time.Hour, 0)
	got := s.serials(t, "")
	if got[0] != got[1] || s.pebble.Issued() != 1 {
		t.Fatalf("serials %v after %d issuances; want one certificate on both nodes", got, s.pebble.Issued())
	}
	if s.edgeAnsweredChallenges(t) {
		t.Fatal("the edge answered an HTTP-01 challenge, though the nodes asked for TLS-ALPN-01 only")
	}
	s.wantExpiryMetric(t)
}

// edgeAnsweredChallenges reads the edge's metrics for answered challenge
// requests.
func (s *acmeSetup) edgeAnsweredChallenges(t *testing.T) bool {
	t.Helper()
	resp, err := http.Get(s.edge.Ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(body)) {
		if strings.Contains(line, "acme-challenge") && strings.Contains(line, "_count") &&
			(strings.Contains(line, `code="200"`) || strings.Contains(line, `code="2xx"`)) {
			return true
		}
	}
	return false
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}
