package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/switchboard-iot/switchboard/app"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
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
	serve, _, err := p.Edge(edge.Config{ID: *id}, ln)
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}

// connFlags are the settings of one connection node.
type connFlags struct {
	listen, region, nodeID, tlsMode, domain, certOut *string
}

func defineConnFlags(f flags) connFlags {
	hostname, _ := os.Hostname()
	return connFlags{
		listen:  f.string("listen", ":8443", "address for device WebSockets", "CONN_LISTEN"),
		region:  f.string("region", "local", "the node's region", "REGION", "FLY_REGION"),
		nodeID:  f.string("node-id", hostname, "the node's id, stable across restarts (on Fly, the Machine id)", "NODE_ID", "FLY_MACHINE_ID"),
		tlsMode: f.string("tls", "self-signed", "TLS for devices: self-signed | off (acme: coming)", "CONN_TLS"),
		domain:  f.string("domain", "", "comma-separated names the certificate covers", "CONN_DOMAIN"),
		certOut: f.string("cert-out", "", "with -tls self-signed: write the certificate (PEM) here for clients to trust", "CONN_CERT_OUT"),
	}
}

// connTLS builds a node's TLS config; stop releases it.
func connTLS(ctx context.Context, cf connFlags) (cfg *tls.Config, stop func(), err error) {
	switch *cf.tlsMode {
	case "off":
		return nil, func() {}, nil
	case "self-signed":
		cfg, pemCert, stop, err := conntier.SelfSigned(ctx, splitList(*cf.domain))
		if err != nil {
			return nil, nil, err
		}
		if *cf.certOut != "" {
			if err := os.WriteFile(*cf.certOut, pemCert, 0o644); err != nil {
				stop()
				return nil, nil, err
			}
		}
		return cfg, stop, nil
	case "acme":
		return nil, nil, errors.New("CONN_TLS=acme is not in this release yet: use self-signed, or off behind a TLS-terminating proxy")
	}
	return nil, nil, fmt.Errorf("CONN_TLS=%q: want self-signed or off", *cf.tlsMode)
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
	tlsCfg, stopTLS, err := connTLS(ctx, cf)
	if err != nil {
		return err
	}
	defer stopTLS()
	ln, err := net.Listen("tcp", *cf.listen)
	if err != nil {
		return err
	}
	serve, _, err := p.Node(conntier.Config{Node: db.Node{ID: *cf.nodeID, Region: *cf.region}, TLS: tlsCfg}, ln)
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}
