package conntier_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-iot/switchboard/app/testsys"
	"github.com/switchboard-iot/switchboard/internal/certs"
)

// The device port's TLS policy, checked with real handshakes: TLS 1.2 at
// least (a TLS 1.1 client is refused), 1.3 when the client has it, an
// ECDSA certificate, HTTP/1.1 only (never h2).
func TestTLSPolicy(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	node := sys.StartNode(t, "node-a", nil)
	addr := node.Base[len("https://"):]
	dial := func(cfg *tls.Config) (tls.ConnectionState, error) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		d := tls.Dialer{Config: cfg}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer conn.Close()
		return conn.(*tls.Conn).ConnectionState(), nil
	}

	old := node.TLS()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if _, err := dial(old); err == nil {
		t.Fatal("a TLS 1.1 client completed a handshake")
	} else if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1 client: %v, want the server's protocol version alert", err)
	}

	tls12 := node.TLS()
	tls12.MaxVersion = tls.VersionTLS12
	tls12.NextProtos = []string{"h2", "http/1.1"}
	state, err := dial(tls12)
	if err != nil || state.Version != tls.VersionTLS12 || state.NegotiatedProtocol != "http/1.1" {
		t.Fatalf("TLS 1.2 client: version %x, ALPN %q, %v; want 1.2 and http/1.1", state.Version, state.NegotiatedProtocol, err)
	}
	h2only := node.TLS()
	h2only.NextProtos = []string{"h2"}
	if _, err := dial(h2only); err == nil || !strings.Contains(err.Error(), "no application protocol") {
		t.Fatalf("a client offering h2 alone: %v, want no application protocol", err)
	}
	modern := node.TLS()
	modern.NextProtos = []string{"h2", "http/1.1"}
	state, err = dial(modern)
	if err != nil || state.Version != tls.VersionTLS13 || state.NegotiatedProtocol != "http/1.1" {
		t.Fatalf("TLS 1.3 client offering h2 and http/1.1: version %x, ALPN %q, %v; want 1.3 and http/1.1", state.Version, state.NegotiatedProtocol, err)
	}
	if _, ok := state.PeerCertificates[0].PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("certificate key %v, want ECDSA", state.PeerCertificates[0].PublicKeyAlgorithm)
	}
}

// The self-signed certificate is made once per deployment and kept in the
// shared storage: every node serves the same one, and a node that
// restarts serves it again, so a device can pin its fingerprint.
func TestSelfSignedPersists(t *testing.T) {
	t.Parallel()
	sys := testsys.New(t)
	a := sys.StartNode(t, "node-a", nil)
	b := sys.StartNode(t, "node-b", nil)
	fingerprint := func(n *testsys.Node) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		leaf, err := testsys.ServedCertificate(ctx, n.Base[len("https://"):], "localhost", n.Roots)
		if err != nil {
			t.Fatal(err)
		}
		return certs.Fingerprint(leaf.Raw)
	}
	first := fingerprint(a)
	if got := fingerprint(b); got != first {
		t.Fatalf("two nodes of one deployment serve %s and %s", first, got)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	again := sys.StartNode(t, "node-a", nil)
	if got := fingerprint(again); got != first {
		t.Fatalf("after a restart the node serves %s, before %s", got, first)
	}
	// And it covers the names it must, for a year or so.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	leaf, err := testsys.ServedCertificate(ctx, again.Base[len("https://"):], "localhost", again.Roots)
	if err != nil || leaf.VerifyHostname("127.0.0.1") != nil || time.Until(leaf.NotAfter) < 300*24*time.Hour {
		t.Fatalf("self-signed leaf: %v, names %v %v, until %v", err, leaf.DNSNames, leaf.IPAddresses, leaf.NotAfter)
	}
}
