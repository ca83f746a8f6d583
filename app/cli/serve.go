package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/switchboard-iot/switchboard/app"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/authguard"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/clientaddr"
	"github.com/switchboard-iot/switchboard/maintenance"
)

func runMigrate(ctx context.Context, sf storeFlags, c call) error {
	pool, _, err := openStore(ctx, *sf.url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	return db.Migrate(ctx, pool, c.log)
}

// edgeFlags are the settings of one edge.
type edgeFlags struct {
	store                        storeFlags
	listen, opsListen, id, hosts *string
	acmeCA                       *string
	keyRate                      *float64
	keyBurst, keyStreams         *int
	deviceQueue                  *int
	retainCommands, retainEvents *time.Duration
	eventsPerDevice              *int
	guard                        guardFlags
	bootstrapKey                 *string
	webhooksHTTP, webhooksPriv   *bool
}

func defineEdgeFlags(f flags) edgeFlags {
	store := defineStoreFlags(f)
	listen := f.string("listen", ":8080", "address of the HTTP API", "EDGE_LISTEN")
	opsListen := defineOpsListen(f, "EDGE_OPS_LISTEN")
	id := f.string("id", "", "edge id, unique among running edges (default: the machine id and a random suffix)", "EDGE_ID")
	hosts := f.string("hosts", "", "comma-separated names clients reach the API by (host or host:port); plain HTTP is redirected to HTTPS for these only, 421 for others (default: $FLY_APP_NAME.fly.dev on Fly, else none)",
		"EDGE_HOSTS")
	acmeCA := f.string("acme-ca", "", "the nodes' ACME directory, whose HTTP-01 challenges this edge answers (default Let's Encrypt)", "CONN_ACME_CA")
	keyRate := f.float("key-rate", edge.DefaultKeyRate, "requests a second per API key (negative: no limit)", "EDGE_KEY_RATE")
	keyBurst := f.int("key-burst", edge.DefaultKeyBurst, "requests at once per API key", "EDGE_KEY_BURST")
	keyStreams := f.int("key-streams", edge.DefaultKeyStreams, "event streams open at once per API key (negative: no limit)", "EDGE_KEY_STREAMS")
	deviceQueue := f.int("device-queue", edge.DefaultDeviceQueue, "pending commands a device may hold; past it a command to it is refused, 429 (negative: no cap)", "EDGE_DEVICE_QUEUE")
	retainCommands := f.duration("retain-commands", maintenance.DefaultRetainCommands, "delete final commands this long after they ended (at least 25h; negative: keep them)", "EDGE_RETAIN_COMMANDS")
	retainEvents := f.duration("retain-events", maintenance.DefaultRetainEvents, "delete device events this long after they arrived (negative: keep them)", "EDGE_RETAIN_EVENTS")
	eventsPerDevice := f.int("events-per-device", maintenance.DefaultEventsPerDevice, "keep at most this many events per device, the newest (negative: no cap)", "EDGE_EVENTS_PER_DEVICE")
	guard := defineGuardFlags(f, "EDGE_", "Fly-Client-IP header")
	bootstrapKey := f.string("bootstrap-key-sha256", "", "hex SHA-256 of the deployment's first admin key, stored with every scope at start unless a key has that hash (revoked, it stays revoked)",
		"SWITCHBOARD_BOOTSTRAP_KEY_SHA256")
	// Webhooks' safety, relaxed for development only (receivers on this
	// machine, without TLS).
	webhooksHTTP := f.Bool("webhooks-allow-http", false, "let webhook URLs be plain http:// (development only) [env EDGE_WEBHOOKS_ALLOW_HTTP]")
	f.setFromEnv("webhooks-allow-http", []string{"EDGE_WEBHOOKS_ALLOW_HTTP"}, "true or false")
	webhooksPriv := f.Bool("webhooks-allow-private", false, "let webhooks reach loopback, link-local and private addresses (development only) [env EDGE_WEBHOOKS_ALLOW_PRIVATE]")
	f.setFromEnv("webhooks-allow-private", []string{"EDGE_WEBHOOKS_ALLOW_PRIVATE"}, "true or false")
	return edgeFlags{webhooksHTTP: webhooksHTTP, webhooksPriv: webhooksPriv, store: store, listen: listen, opsListen: opsListen, id: id, hosts: hosts, acmeCA: acmeCA, keyRate: keyRate, keyBurst: keyBurst, keyStreams: keyStreams,
		deviceQueue:    deviceQueue,
		retainCommands: retainCommands, retainEvents: retainEvents, eventsPerDevice: eventsPerDevice, guard: guard, bootstrapKey: bootstrapKey}
}

func runEdge(ctx context.Context, ef edgeFlags, c call) error {
	guardCfg, trusted, err := ef.guard.config()
	if err != nil {
		return err
	}
	id := *ef.id
	if id == "" {
		id = edge.NewID(c.getenv("FLY_MACHINE_ID"))
	}
	hosts := splitList(*ef.hosts)
	if app := c.getenv("FLY_APP_NAME"); len(hosts) == 0 && app != "" {
		hosts = []string{app + ".fly.dev"} // the name Fly gives every app
	}
	app.TuneMemory(c.log)
	p, err := app.Open(ctx, *ef.store.url, c.log)
	if err != nil {
		return err
	}
	defer p.Close()
	ln, err := net.Listen("tcp", *ef.listen)
	if err != nil {
		return err
	}
	serve, e, err := p.Edge(edge.Config{
		ID: id, Hosts: hosts, KeyRate: *ef.keyRate, KeyBurst: *ef.keyBurst, KeyStreams: *ef.keyStreams,
		DeviceQueue: *ef.deviceQueue,
		AuthGuard:   guardCfg, TrustedProxies: trusted, BootstrapKeySHA256: *ef.bootstrapKey,
		WebhooksAllowHTTP: *ef.webhooksHTTP, WebhooksAllowPrivate: *ef.webhooksPriv,
	}, maintenance.Config{
		RetainCommands: *ef.retainCommands, RetainEvents: *ef.retainEvents, EventsPerDevice: *ef.eventsPerDevice,
		WebhooksAllowHTTP: *ef.webhooksHTTP, WebhooksAllowPrivate: *ef.webhooksPriv,
	}, certs.Config{CA: *ef.acmeCA}, ln)
	if err == nil {
		err = serveOps(p, *ef.opsListen, e.NotReady)
	}
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve)
}

// defineOpsListen is the -ops-listen flag of a process, read from env.
func defineOpsListen(f flags, env string) *string {
	return f.string("ops-listen", "", "address of the plain-HTTP ops listener, the only one with /metrics and Go's profiles under /debug/pprof/ (and /healthz, /readyz with reasons); keep it private (default: none)",
		env)
}

// serveOps has p serve its ops listener on addr, with the readiness of
// notReady (an edge's or a node's NotReady); none when addr is empty.
func serveOps(p *app.Process, addr string, notReady func(context.Context) string) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p.ServeOps(ln, notReady)
	return nil
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
	store                                      storeFlags
	listen, opsListen, region, nodeID, certOut *string
	tls                                        certsFlags
	deviceRate                                 *float64
	deviceBurst                                *int
	deviceConnectRate                          *float64
	deviceConnectBurst                         *int
	maxSessions, maxHandshakes                 *int
	maxSilent, maxSilentPerAddress             *int
	drain, firstByteTimeout                    *time.Duration
	guard                                      guardFlags
}

// certsFlags are the settings of a node's certificate.
type certsFlags struct {
	mode, domain, ca, caRoot, email, challenge *string
}

func defineConnFlags(f flags) connFlags {
	hostname, _ := os.Hostname()
	return connFlags{
		store:     defineStoreFlags(f),
		listen:    f.string("listen", ":8443", "address for device WebSockets", "CONN_LISTEN"),
		opsListen: defineOpsListen(f, "CONN_OPS_LISTEN"),
		region:    f.string("region", "local", "the node's region", "REGION", "FLY_REGION"),
		nodeID:    f.string("node-id", hostname, "the node's id, stable across restarts (on Fly, the Machine id)", "NODE_ID", "FLY_MACHINE_ID"),
		certOut:   f.string("cert-out", "", "with -tls self-signed: write the certificate (PEM) here for clients to trust", "CONN_CERT_OUT"),
		tls: certsFlags{
			mode:   f.string("tls", certs.ModeSelfSigned, "TLS for devices: acme | self-signed (local development) | off (behind a TLS proxy)", "CONN_TLS"),
			domain: f.string("domain", "", "comma-separated names the certificate covers (required with -tls acme)", "CONN_DOMAIN"),
			ca:     f.string("acme-ca", "", "ACME directory URL (default Let's Encrypt)", "CONN_ACME_CA"),
			caRoot: f.string("acme-ca-root", "", "PEM file of the root to trust for the ACME directory (private or test CAs)", "CONN_ACME_CA_ROOT"),
			email:  f.string("acme-email", "", "contact address of the ACME account (expiry notices)", "CONN_ACME_EMAIL"),
			challenge: f.string("acme-challenge", "", `the ACME challenge to use: "http-01" (on Fly: port 80 reaches the edges), "tls-alpn-01" (this node listens on 443), or both when empty`,
				"CONN_ACME_CHALLENGE"),
		},
		deviceRate: f.float("device-rate", conntier.DefaultDeviceRate,
			"messages a second a device may send; past it events are dropped (negative: no limit)", "CONN_DEVICE_RATE"),
		deviceBurst: f.int("device-burst", conntier.DefaultDeviceBurst,
			"messages a device may send at once; another burst over the rate closes it with 4029", "CONN_DEVICE_BURST"),
		deviceConnectRate: f.float("device-connect-rate", conntier.DefaultDeviceConnectRate,
			"connects a second a device may make to a node; past it connects get 429 and Retry-After (negative: no limit)", "CONN_DEVICE_CONNECT_RATE"),
		deviceConnectBurst: f.int("device-connect-burst", conntier.DefaultDeviceConnectBurst,
			"connects a device may make to a node at once, before the connect rate applies", "CONN_DEVICE_CONNECT_BURST"),
		maxSessions: f.int("max-sessions", 0,
			"devices this node holds at most; past it connects get 503 and Retry-After (default: the open-files limit less the pool, handshakes, silent connections and listeners)", "CONN_MAX_SESSIONS"),
		maxHandshakes: f.int("max-handshakes", conntier.DefaultMaxHandshakes,
			"connections the node works on at once before their upgrade (TLS handshake, credentials check); silent ones do not count; more wait in the accept queue", "CONN_MAX_HANDSHAKES"),
		firstByteTimeout: f.duration("first-byte-timeout", conntier.DefaultFirstByteTimeout,
			"how long a connection may stay silent before its first byte (of TLS); silent connections take no handshake slot", "CONN_FIRST_BYTE_TIMEOUT"),
		maxSilent: f.int("max-silent", conntier.DefaultMaxSilent,
			"silent connections (waited on before their upgrade) a node keeps once idle 5s; past it the one silent longest is closed", "CONN_MAX_SILENT"),
		maxSilentPerAddress: f.int("max-silent-per-address", conntier.DefaultMaxSilentPerAddress,
			"idle silent connections kept from one source address (a carrier NAT's fleet shares one); past it its silent longest is closed", "CONN_MAX_SILENT_PER_ADDRESS"),
		drain: f.duration("drain", conntier.DefaultDrainWindow,
			"on SIGTERM, close the sessions (1001) in paced batches over this long, so other nodes take the devices in steps", "CONN_DRAIN"),
		guard: defineGuardFlags(f, "CONN_", "PROXY protocol header (required from them)"),
	}
}

func (cf certsFlags) config() certs.Config {
	return certs.Config{Mode: *cf.mode, Domains: splitList(*cf.domain), CA: *cf.ca, CARoot: *cf.caRoot, Email: *cf.email,
		Challenge: *cf.challenge}
}

func runConn(ctx context.Context, cf connFlags, c call) error {
	guardCfg, trusted, err := cf.guard.config()
	if err != nil {
		return err
	}
	app.TuneMemory(c.log)
	p, err := app.Open(ctx, *cf.store.url, c.log)
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
	serve, node, err := p.Node(conntier.Config{
		Node:       db.Node{ID: *cf.nodeID, Region: *cf.region},
		DeviceRate: *cf.deviceRate, DeviceBurst: *cf.deviceBurst, AuthGuard: guardCfg, TrustedProxies: trusted,
		DeviceConnectRate: *cf.deviceConnectRate, DeviceConnectBurst: *cf.deviceConnectBurst,
		MaxSessions: *cf.maxSessions, MaxHandshakes: *cf.maxHandshakes, DrainWindow: *cf.drain,
		FirstByteTimeout: *cf.firstByteTimeout, MaxSilent: *cf.maxSilent, MaxSilentPerAddress: *cf.maxSilentPerAddress,
	}, tls, ln)
	if err == nil {
		err = serveOps(p, *cf.opsListen, node.NotReady)
	}
	if err != nil {
		ln.Close()
		return err
	}
	return p.Run(ctx, app.UntilSignal, serve, app.GCTuner(app.NodeHeadroom))
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
