package certs

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
	"io/fs"
	"math/big"
	"net"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/switchboard-iot/switchboard/internal/backoff"
)

// The self-signed certificate and its key live in the shared storage, so
// that every node of a deployment serves the same one and it survives
// restarts: a device can pin its fingerprint.
const (
	selfSignedCert = "switchboard/self-signed/cert.pem"
	selfSignedKey  = "switchboard/self-signed/key.pem"
	selfSignedLock = "switchboard_self_signed"
)

// selfSigned serves a self-signed certificate for local development, made
// once per deployment (or again when it no longer covers the names, or
// nears its end), through certmagic's cache like an ACME one.
func selfSigned(ctx context.Context, cfg Config) (*TLS, error) {
	names := append([]string{"localhost", "127.0.0.1", "::1"}, cfg.Domains...)
	// The certificate lives in the database: wait for it, as a node waits
	// for its lease, rather than fail while PostgreSQL is away.
	var cert tls.Certificate
	err := backoff.Retry(ctx, backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}, func(ctx context.Context) error {
		var err error
		cert, err = loadOrMakeSelfSigned(ctx, cfg.Storage, names)
		return err
	}, func(err error, wait time.Duration) {
		cfg.Log.Warn("loading the self-signed certificate; retrying", "err", err, "in", wait)
	})
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	var magic *certmagic.Config
	// Nothing here is managed (no ACME, no OCSP): certmagic stays quiet.
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           zap.NewNop(),
	})
	magic = certmagic.New(cache, certmagic.Config{
		// A client that sends no SNI (it dialled an address the
		// certificate does not name) still gets this certificate.
		DefaultServerName: "localhost",
		OCSP:              certmagic.OCSPConfig{DisableStapling: true},
		Logger:            zap.NewNop(),
	})
	if _, err := magic.CacheUnmanagedTLSCertificate(ctx, cert, nil); err != nil {
		cache.Stop()
		return nil, err
	}
	der := cert.Certificate[0]
	fp := Fingerprint(der)
	cfg.Log.Info("serving a self-signed certificate (local development only: devices cannot verify it without pinning)",
		"sha256", fp, "names", cert.Leaf.DNSNames, "ips", cert.Leaf.IPAddresses, "expires", cert.Leaf.NotAfter)
	return &TLS{
		Config:      policy(magic.TLSConfig(), false),
		PEM:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Fingerprint: fp,
		Ready:       func() bool { return true },
		NotAfter:    func() time.Time { return notAfter(&cert) },
		Stop:        cache.Stop,
	}, nil
}

// loadOrMakeSelfSigned returns the stored certificate when it still covers
// names for another 30 days; otherwise it makes and stores a new one. The
// storage lock keeps two nodes starting at once from making two.
func loadOrMakeSelfSigned(ctx context.Context, storage certmagic.Storage, names []string) (tls.Certificate, error) {
	if storage == nil {
		return makeSelfSigned(names)
	}
	if err := storage.Lock(ctx, selfSignedLock); err != nil {
		return tls.Certificate{}, err
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), selfSignedLock) }()
	certPEM, err := storage.Load(ctx, selfSignedCert)
	var keyPEM []byte
	if err == nil {
		keyPEM, err = storage.Load(ctx, selfSignedKey)
	}
	switch {
	case err == nil:
		if cert, err := tls.X509KeyPair(certPEM, keyPEM); err == nil && covers(cert.Leaf, names) &&
			time.Until(cert.Leaf.NotAfter) > 30*24*time.Hour {
			return cert, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return tls.Certificate{}, err
	}
	cert, err := makeSelfSigned(names)
	if err != nil {
		return cert, err
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return cert, err
	}
	// The key first: a certificate stored without its key would be useless.
	if err := storage.Store(ctx, selfSignedKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})); err != nil {
		return cert, err
	}
	err = storage.Store(ctx, selfSignedCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	return cert, err
}

func covers(leaf *x509.Certificate, names []string) bool {
	for _, name := range names {
		if leaf.VerifyHostname(name) != nil {
			return false
		}
	}
	return true
}

// makeSelfSigned makes an ECDSA P-256 certificate, valid for a year, that
// is its own CA so that clients can trust it as a root.
func makeSelfSigned(names []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "switchboard connection node"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
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
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
