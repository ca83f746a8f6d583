package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Client is the TLS config of a client of the nodes (simulated devices,
// the load generator): it trusts caFile when given (a node's -cert-out),
// else the system roots, and verifies nothing when insecure.
func Client(caFile string, insecure bool) (*tls.Config, error) {
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
