// Package certs is the connection tier's TLS: certificates from an ACME CA
// (Let's Encrypt, or any other) through certmagic, or a self-signed one for
// local development, both kept in the storage every process shares
// (db.CertStorage), and the TLS policy the device port serves with.
//
// With ACME, all nodes share one certificate, one ACME account and the
// challenge tokens: N nodes cause one issuance and one renewal (certmagic
// locks in the shared storage), and any process can answer a challenge,
// which is how an edge answers HTTP-01 on port 80 for nodes behind Fly's
// proxy. A node that listens on 443 itself answers TLS-ALPN-01.
package certs

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

// ACME challenge types (CONN_ACME_CHALLENGE).
const (
	ChallengeHTTP    = "http-01"
	ChallengeTLSALPN = "tls-alpn-01"
)

// Modes of a node's TLS (CONN_TLS).
const (
	ModeACME       = "acme"
	ModeSelfSigned = "self-signed"
	ModeOff        = "off"
)

// Config says how a node gets its certificate.
type Config struct {
	Mode    string
	Domains []string          // names the certificate covers (CONN_DOMAIN)
	Storage certmagic.Storage // shared by every process: db.NewCertStorage
	Log     *slog.Logger

	// ACME only.
	CA     string // directory URL (CONN_ACME_CA); Let's Encrypt's when empty
	CARoot string // PEM file trusted for CA (CONN_ACME_CA_ROOT), for private and test CAs
	Email  string // the ACME account's contact (CONN_ACME_EMAIL)
	// Challenge limits the challenges to one type (CONN_ACME_CHALLENGE):
	// "http-01" (on Fly, where port 80 reaches the edges), "tls-alpn-01"
	// (a node that listens on 443 itself), or "" for both.
	Challenge string
	// HTTPPort and TLSPort are where the CA's validation requests arrive
	// when not on 80 and 443 (tests; unusual proxies). 0: the standard ports.
	HTTPPort, TLSPort int
	// RenewCheck is how often certificates are checked for renewal (10m).
	RenewCheck time.Duration
	// RenewWindow, when set, renews a certificate once this fraction of its
	// life is left, and ignores the CA's renewal window (ARI); by default
	// certmagic follows ARI, or renews with a third of the life left.
	RenewWindow float64
}

// TLS is what a node serves with.
type TLS struct {
	Config *tls.Config // nil for ModeOff
	// PEM and Fingerprint are the self-signed certificate, for clients to
	// trust or pin (its SHA-256, as "AB:CD:…").
	PEM         []byte
	Fingerprint string
	// Ready reports whether there is a certificate to serve: with ACME, not
	// until the first one is obtained or loaded.
	Ready func() bool
	// NotAfter is when the certificate served now expires; zero while
	// there is none (ACME before the first one) and for ModeOff. A node
	// exports it (switchboard_conn_certificate_expiry_timestamp_seconds)
	// for an alert that a renewal is overdue.
	NotAfter func() time.Time
	// Stop ends certificate maintenance (renewals).
	Stop func()
}

// notAfter is cert's expiry, zero when it cannot be read.
func notAfter(cert *tls.Certificate) time.Time {
	if cert == nil {
		return time.Time{}
	}
	if cert.Leaf != nil {
		return cert.Leaf.NotAfter
	}
	if len(cert.Certificate) == 0 {
		return time.Time{}
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return time.Time{}
	}
	return leaf.NotAfter
}

// policy is the device port's TLS policy: TLS 1.2 at least (Go prefers
// 1.3, and offers only AEAD suites with forward secrecy for 1.2 by
// default); ECDSA P-256 keys (certmagic's default, and ours for
// self-signed). HTTP/1.1 is the only application protocol: WebSockets
// upgrade over it, and acme-tls/1 must stay for TLS-ALPN-01.
func policy(cfg *tls.Config, acme bool) *tls.Config {
	cfg.MinVersion = tls.VersionTLS12
	cfg.NextProtos = []string{"http/1.1"}
	if acme {
		cfg.NextProtos = append(cfg.NextProtos, "acme-tls/1")
	}
	return cfg
}

// ForNode makes a node's TLS. With ACME it starts obtaining (or loading)
// the certificate in the background and returns at once: handshakes fail,
// and Ready reports false, until it is there; certmagic retries with
// backoff, and renews before expiry.
func ForNode(ctx context.Context, cfg Config) (*TLS, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	switch cfg.Mode {
	case ModeOff:
		return &TLS{Ready: func() bool { return true }, NotAfter: func() time.Time { return time.Time{} }, Stop: func() {}}, nil
	case ModeSelfSigned:
		return selfSigned(ctx, cfg)
	case ModeACME:
		return acmeTLS(ctx, cfg)
	}
	return nil, fmt.Errorf("TLS mode %q: want %s, %s or %s", cfg.Mode, ModeACME, ModeSelfSigned, ModeOff)
}

func acmeTLS(ctx context.Context, cfg Config) (*TLS, error) {
	if len(cfg.Domains) == 0 {
		return nil, errors.New("CONN_TLS=acme needs the names to certify: set CONN_DOMAIN (comma-separated)")
	}
	if cfg.Storage == nil {
		return nil, errors.New("CONN_TLS=acme needs the shared certificate storage")
	}
	magic, cache, err := newMagic(cfg)
	if err != nil {
		return nil, err
	}
	manageCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if err := magic.ManageAsync(manageCtx, cfg.Domains); err != nil {
		cancel()
		cache.Stop()
		return nil, fmt.Errorf("managing the certificate for %s: %w", strings.Join(cfg.Domains, ", "), err)
	}
	cfg.Log.Info("ACME certificate managed", "domains", cfg.Domains, "ca", magic.Issuers[0].IssuerKey())
	return &TLS{
		Config: policy(magic.TLSConfig(), true),
		// The cache, not magic.GetCertificate: that one logs the
		// handshake's connection when it finds nothing, and a hello made
		// up here has none (it panicked on every /readyz until the first
		// certificate came).
		Ready: func() bool { return len(cache.AllMatchingCertificates(cfg.Domains[0])) > 0 },
		NotAfter: func() time.Time {
			var latest time.Time
			for _, c := range cache.AllMatchingCertificates(cfg.Domains[0]) {
				if na := notAfter(&c.Certificate); na.After(latest) {
					latest = na
				}
			}
			return latest
		},
		Stop: func() { cancel(); cache.Stop() },
	}, nil
}

// newMagic makes certmagic's config: the shared storage, one ACME issuer.
func newMagic(cfg Config) (*certmagic.Config, *certmagic.Cache, error) {
	var roots *x509.CertPool
	if cfg.CARoot != "" {
		pem, err := os.ReadFile(cfg.CARoot)
		if err != nil {
			return nil, nil, fmt.Errorf("CONN_ACME_CA_ROOT: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("CONN_ACME_CA_ROOT %s: no PEM certificate in it", cfg.CARoot)
		}
	}
	switch cfg.Challenge {
	case "", ChallengeHTTP, ChallengeTLSALPN:
	default:
		return nil, nil, fmt.Errorf("CONN_ACME_CHALLENGE=%q: want %s, %s or empty for both", cfg.Challenge, ChallengeHTTP, ChallengeTLSALPN)
	}
	ca := cfg.CA
	if ca == "" {
		ca = certmagic.LetsEncryptProductionCA
	}
	logger := zapLogger(cfg.Log)
	var magic *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		RenewCheckInterval: cfg.RenewCheck,
		Logger:             logger,
	})
	magic = certmagic.New(cache, certmagic.Config{
		Storage:            cfg.Storage,
		Logger:             logger,
		RenewalWindowRatio: cfg.RenewWindow,
		DisableARI:         cfg.RenewWindow != 0,
		// No OCSP stapling: Let's Encrypt ended OCSP in 2025.
		OCSP: certmagic.OCSPConfig{DisableStapling: true},
	})
	magic.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{
		CA:             ca,
		Email:          cfg.Email,
		Agreed:         true,
		TrustedRoots:   roots,
		AltHTTPPort:    cfg.HTTPPort,
		AltTLSALPNPort: cfg.TLSPort,
		// HTTP-01 is kept for the edge's answerer, which only reads the
		// storage: it never asks for a certificate.
		DisableHTTPChallenge:    cfg.Challenge == ChallengeTLSALPN && cfg.Mode == ModeACME,
		DisableTLSALPNChallenge: cfg.Challenge == ChallengeHTTP,
		Logger:                  logger,
	})}
	return magic, cache, nil
}

// HTTPChallenges returns what answers ACME HTTP-01 challenges for the
// connection nodes from the shared storage: an edge on port 80 serves it at
// /.well-known/acme-challenge/, for any process that asked. It reports
// whether it answered. cfg needs the CA the nodes use, and the storage.
func HTTPChallenges(cfg Config) (func(http.ResponseWriter, *http.Request) bool, func(), error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	magic, cache, err := newMagic(cfg)
	if err != nil {
		return nil, nil, err
	}
	issuer := magic.Issuers[0].(*certmagic.ACMEIssuer)
	return issuer.HandleHTTPChallenge, cache.Stop, nil
}

// Fingerprint is a certificate's SHA-256 as colon-separated hex, the form
// browsers and openssl show.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	hexed := make([]string, len(sum))
	for i, b := range sum {
		hexed[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(hexed, ":")
}
