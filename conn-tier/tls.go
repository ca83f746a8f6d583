package conntier

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// SelfSigned serves a freshly generated self-signed certificate for names
// (DNS names or IP addresses; localhost and loopback are always included)
// through certmagic's certificate cache, the same path ACME certificates
// take. It returns the TLS config, the certificate in PEM (for clients to
// trust) and a function that stops the cache's maintenance goroutine.
func SelfSigned(ctx context.Context, names []string) (*tls.Config, []byte, func(), error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "switchboard connection node"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // so clients can trust it as its own root
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, name := range names {
		if ip := net.ParseIP(name); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if name != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}

	var magic *certmagic.Config
	// Nothing here is managed (no ACME, no OCSP), so certmagic has nothing
	// to say: its zap logger stays quiet.
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           zap.NewNop(),
	})
	magic = certmagic.New(cache, certmagic.Config{
		// A client that sends no SNI (it dialled an IP address we did not
		// list) still gets this certificate.
		DefaultServerName: "localhost",
		OCSP:              certmagic.OCSPConfig{DisableStapling: true},
		Logger:            zap.NewNop(),
	})
	if _, err := magic.CacheUnmanagedTLSCertificate(ctx, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil); err != nil {
		cache.Stop()
		return nil, nil, nil, err
	}
	cfg := magic.TLSConfig()
	cfg.NextProtos = []string{"http/1.1"} // WebSockets upgrade over HTTP/1.1
	return cfg, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cache.Stop, nil
}
