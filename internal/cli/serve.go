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
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
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
	keyRate := f.float("key-rate", edge.DefaultKeyRate, "requests a second per API key (negative: no limit)", "EDGE_KEY_RATE")
	keyBurst := f.int("key-burst", edge.DefaultKeyBurst, "requests at once per API key", "EDGE_KEY_BURST")
	keyStreams := f.int("key-streams", edge.DefaultKeyStreams, "event streams open at once per API key (negative: no limit)", "EDGE_KEY_STREAMS")
	guard := defineGuardFlags(f, "EDGE_", "Fly-Client-IP header")
	if err := f.parse(args); err != nil {
		return err
	}
	guardCfg, trusted, err := guard.config()
	if err != nil {
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
	serve, _, err := p.Edge(edge.Config{
		ID: *id, KeyRate: *keyRate, KeyBurst: *keyBurst, KeyStreams: *keyStreams,
		AuthGuard: guardCfg, TrustedProxies: trusted,
	}, ln)
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}

// guardFlags are the auth guard's settings and the trusted proxies, which
// name the source addresses it throttles.
type guardFlags struct {
	failRate  *float64
	failBurst *int
	trusted   *string
}

func defineGuardFlags(f flags, envPrefix, claim string) guardFlags {
	return guardFlags{
		failRate: f.float("auth-fail-rate", authguard.DefaultFailureRate,
			"failed credential look-ups a second a source address earns back (negative: no limit)", envPrefix+"AUTH_FAIL_RATE"),
		failBurst: f.int("auth-fail-burst", authguard.DefaultFailureBurst,
			"failed credential look-ups a source address may make at once before 429", envPrefix+"AUTH_FAIL_BURST"),
		trusted: f.string("trusted-proxies", "",
			"comma-separated addresses or CIDR prefixes of proxies whose "+claim+" names the client (default: none, the client is the TCP peer)", envPrefix+"TRUSTED_PROXIES"),
	}
}

func (g guardFlags) config() (authguard.Config, clientaddr.Trusted, error) {
	trusted, err := clientaddr.ParseTrusted(*g.trusted)
	if err != nil {
		return authguard.Config{}, nil, fmt.Errorf("-trusted-proxies: %w", err)
	}
	return authguard.Config{FailureRate: *g.failRate, FailureBurst: *g.failBurst}, trusted, nil
}

// connFlags are the settings of one connection node.
type connFlags struct {
	listen, region, nodeID, tlsMode, domain, certOut *string
	deviceRate                                       *float64
	deviceBurst                                      *int
	guard                                            guardFlags
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
		deviceRate: f.float("device-rate", conntier.DefaultDeviceRate,
			"messages a second a device may send; past it events are dropped (negative: no limit)", "CONN_DEVICE_RATE"),
		deviceBurst: f.int("device-burst", conntier.DefaultDeviceBurst,
			"messages a device may send at once; another burst over the rate closes it with 4029", "CONN_DEVICE_BURST"),
		guard: defineGuardFlags(f, "CONN_", "PROXY protocol header (required from them)"),
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
	guardCfg, trusted, err := cf.guard.config()
	if err != nil {
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
	serve, _, err := p.Node(conntier.Config{
		Node: db.Node{ID: *cf.nodeID, Region: *cf.region}, TLS: tlsCfg,
		DeviceRate: *cf.deviceRate, DeviceBurst: *cf.deviceBurst, AuthGuard: guardCfg, TrustedProxies: trusted,
	}, ln)
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}
