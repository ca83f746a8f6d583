package testsys

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Pebble is Let's Encrypt's test CA, running as a process of the test: an
// ACME server on loopback that validates challenges for real, against the
// ports it is told. It is built from the module (a tool dependency in
// go.mod), so no download happens here.
type Pebble struct {
	Dir        string // the ACME directory URL
	RootFile   string // PEM of the root that Pebble's own HTTPS listeners chain to (CONN_ACME_CA_ROOT)
	management string // its management interface, which serves the issuing root
	clientTLS  *tls.Config
	out        *Output
}

// PebbleOptions say where Pebble validates challenges and how long its
// certificates last.
type PebbleOptions struct {
	HTTPPort, TLSPort int // where HTTP-01 and TLS-ALPN-01 validations connect
	Validity          time.Duration
}

var buildPebble = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "switchboard-pebble-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "pebble")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/letsencrypt/pebble/v2/cmd/pebble").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building pebble: %v\n%s", err, out)
	}
	return bin, nil
})

// StartPebble runs Pebble until the test ends.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	bin, err := buildPebble()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rootPEM, certPEM, keyPEM := listenerCertificate(t)
	files := map[string][]byte{"root.pem": rootPEM, "cert.pem": certPEM, "key.pem": keyPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	listen, management := freeAddr(t), freeAddr(t)
	config := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": management,
		"certificate":             filepath.Join(dir, "cert.pem"),
		"privateKey":              filepath.Join(dir, "key.pem"),
		"httpPort":                opts.HTTPPort,
		"tlsPort":                 opts.TLSPort,
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
		"profiles": map[string]any{"default": map[string]any{
			"description": "test", "validityPeriod": int(opts.Validity.Seconds()),
		}},
	}}
	raw, _ := json.Marshal(config)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Pebble{
		Dir:        "https://" + listen + "/dir",
		RootFile:   filepath.Join(dir, "root.pem"),
		management: "https://" + management,
		out:        &Output{},
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	p.clientTLS = &tls.Config{RootCAs: roots}

	cmd := exec.Command(bin, "-config", filepath.Join(dir, "config.json"))
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("--- pebble output:\n%s", p.out.String())
		}
	})
	Eventually(t, "pebble's directory", func() bool {
		resp, err := p.client().Get(p.Dir)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func (p *Pebble) client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS, DisableKeepAlives: true}, Timeout: 5 * time.Second}
}

// IssuingRoots trusts the certificates Pebble issues.
func (p *Pebble) IssuingRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.client().Get(p.management + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	pemBytes, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("pebble's root: %s", pemBytes)
	}
	return roots
}

// Issued counts the certificates Pebble has issued.
func (p *Pebble) Issued() int {
	return strings.Count(p.out.String(), "Issued certificate serial")
}

// freeAddr finds a free loopback address for a process to listen on. (It
// could be taken before the process binds it; the OS seldom reuses a port
// that fast.)
func freeAddr(t testing.TB) string {
	t.Helper()
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// listenerCertificate makes a CA and a certificate it signs for 127.0.0.1
// and localhost, for Pebble's own HTTPS listeners.
func listenerCertificate(t testing.TB) (rootPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "switchboard test CA for pebble"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "pebble"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// ServedCertificate is the leaf a TLS server at addr serves for name,
// verified against roots.
func ServedCertificate(ctx context.Context, addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: roots}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// Output collects a process's output, safe to read while it writes.
type Output struct {
	mu sync.Mutex
	b  strings.Builder
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}
