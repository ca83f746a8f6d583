package cli

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/switchboard-iot/switchboard/app"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/certs"
)

func runMigrate(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	f := newFlags("migrate", getenv, stdio)
	dbURL := f.databaseURL()
	if err := f.parse(args); err != nil {
		return err
	}
	pool, _, err := openStore(ctx, *dbURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	return db.Migrate(ctx, pool, log)
}

func runEdge(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	f := newFlags("edge", getenv, stdio)
	dbURL := f.databaseURL()
	listen := f.string("listen", ":8080", "address of the HTTP API", "EDGE_LISTEN")
	id := f.string("id", "", "edge id, unique among running edges (default: the machine id and a random suffix)", "EDGE_ID")
	acmeCA := f.string("acme-ca", "", "the nodes' ACME directory, whose HTTP-01 challenges this edge answers (default Let's Encrypt)", "CONN_ACME_CA")
	if err := f.parse(args); err != nil {
		return err
	}
	if *id == "" {
		*id = edge.NewID(getenv("FLY_MACHINE_ID"))
	}
	p, err := app.Open(ctx, *dbURL, log)
	if err != nil {
		return err
	}
	defer p.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	serve, _, err := p.Edge(edge.Config{ID: *id}, certs.Config{CA: *acmeCA}, ln)
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}

// connFlags are the settings of one connection node.
type connFlags struct {
	listen, region, nodeID, certOut *string
	tls                             certsFlags
}

// certsFlags are the settings of a node's certificate.
type certsFlags struct {
	mode, domain, ca, caRoot, email, challenge *string
}

func defineConnFlags(f flags) connFlags {
	hostname, _ := os.Hostname()
	return connFlags{
		listen:  f.string("listen", ":8443", "address for device WebSockets", "CONN_LISTEN"),
		region:  f.string("region", "local", "the node's region", "REGION", "FLY_REGION"),
		nodeID:  f.string("node-id", hostname, "the node's id, stable across restarts (on Fly, the Machine id)", "NODE_ID", "FLY_MACHINE_ID"),
		certOut: f.string("cert-out", "", "with -tls self-signed: write the certificate (PEM) here for clients to trust", "CONN_CERT_OUT"),
		tls: certsFlags{
			mode:   f.string("tls", certs.ModeSelfSigned, "TLS for devices: acme | self-signed (local development) | off (behind a TLS proxy)", "CONN_TLS"),
			domain: f.string("domain", "", "comma-separated names the certificate covers (required with -tls acme)", "CONN_DOMAIN"),
			ca:     f.string("acme-ca", "", "ACME directory URL (default Let's Encrypt)", "CONN_ACME_CA"),
			caRoot: f.string("acme-ca-root", "", "PEM file of the root to trust for the ACME directory (private or test CAs)", "CONN_ACME_CA_ROOT"),
			email:  f.string("acme-email", "", "contact address of the ACME account (expiry notices)", "CONN_ACME_EMAIL"),
			challenge: f.string("acme-challenge", "", `the ACME challenge to use: "http-01" (on Fly: port 80 reaches the edges), "tls-alpn-01" (this node listens on 443), or both when empty`,
				"CONN_ACME_CHALLENGE"),
		},
	}
}

func (cf certsFlags) config() certs.Config {
	return certs.Config{Mode: *cf.mode, Domains: splitList(*cf.domain), CA: *cf.ca, CARoot: *cf.caRoot, Email: *cf.email,
		Challenge: *cf.challenge}
}

func runConn(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	f := newFlags("conn", getenv, stdio)
	dbURL := f.databaseURL()
	cf := defineConnFlags(f)
	if err := f.parse(args); err != nil {
		return err
	}
	p, err := app.Open(ctx, *dbURL, log)
	if err != nil {
		return err
	}
	defer p.Close()
	tls, err := p.TLS(ctx, cf.tls.config())
	if err != nil {
		return err
	}
	defer tls.Stop()
	if *cf.certOut != "" && tls.PEM != nil {
		if err := os.WriteFile(*cf.certOut, tls.PEM, 0o644); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", *cf.listen)
	if err != nil {
		return err
	}
	serve, _, err := p.Node(conntier.Config{Node: db.Node{ID: *cf.nodeID, Region: *cf.region}}, tls, ln)
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
