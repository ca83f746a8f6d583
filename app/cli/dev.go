package cli

import (
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/switchboard-iot/switchboard/app"
	conntier "github.com/switchboard-iot/switchboard/conn-tier"
	"github.com/switchboard-iot/switchboard/console"
	"github.com/switchboard-iot/switchboard/db"
	"github.com/switchboard-iot/switchboard/device/protocol"
	"github.com/switchboard-iot/switchboard/edge"
	"github.com/switchboard-iot/switchboard/internal/certs"
	"github.com/switchboard-iot/switchboard/internal/pgcluster"
	"github.com/switchboard-iot/switchboard/internal/secret"
	"github.com/switchboard-iot/switchboard/maintenance"
)

// devRooms label the simulated thermostats (room=kitchen, …).
var devRooms = []string{"kitchen", "hall", "bedroom"}

// devFlags are the flags of "dev".
type devFlags struct {
	dir, edgeListen, connListen, opsListen *string
	pgPort, devices                        *int
}

func defineDevFlags(f flags) devFlags {
	return devFlags{
		dir:        f.string("dir", filepath.Join(os.TempDir(), fmt.Sprintf("switchboard-dev-%d", os.Getuid())), "folder for the database, the API key and the node certificate (wiped on start)"),
		edgeListen: f.string("edge-listen", "localhost:8080", "address of the edge", "EDGE_LISTEN"),
		connListen: f.string("conn-listen", "localhost:8443,localhost:8444", "addresses of the two connection nodes"),
		opsListen:  f.string("ops-listen", "localhost:9091", "address of the ops listener: the process's /metrics (edge and nodes), profiles under /debug/pprof/, the edge's /readyz with reasons (\"\": none)"),
		pgPort:     f.Int("pg-port", 54329, "port of the private PostgreSQL (0: any free port)"),
		devices:    f.Int("devices", 6, "simulated thermostats"),
	}
}

// runDev runs the whole system in one process on a private PostgreSQL: one
// edge, two connection nodes and simulated thermostats. Its database is new
// on every run.
func runDev(ctx context.Context, df devFlags, c call) error {
	connAddrs := splitList(*df.connListen)
	if len(connAddrs) != 2 {
		return fmt.Errorf("-conn-listen: want two addresses, got %q", *df.connListen)
	}
	// Claim the ports before touching the database: a second "dev" must not
	// wipe the first one's.
	addrs := append([]string{*df.edgeListen}, connAddrs...)
	if *df.opsListen != "" {
		addrs = append(addrs, *df.opsListen)
	}
	lns, err := listenAll(addrs)
	if err != nil {
		return fmt.Errorf("is another switchboard dev running? %w", err)
	}
	defer closeAll(lns)
	ops := ""
	if *df.opsListen != "" {
		ops = "http://" + advertised(addrs[3], lns[3])
	}

	dbURL, stopCluster, err := startDevDatabase(ctx, *df.dir, *df.pgPort, c)
	if err != nil {
		return err
	}
	defer stopCluster()
	// One process, as in production: one pool and one listener connection
	// for the edge and both nodes.
	p, err := app.Open(ctx, dbURL+"&pool_max_conns=32", c.log)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := db.Migrate(ctx, p.Pool, c.log); err != nil {
		return err
	}
	creds, err := provisionDev(ctx, p.Store, *df.dir, *df.devices)
	if err != nil {
		return err
	}
	// One certificate for both nodes; the simulated devices trust it.
	tls, err := p.TLS(ctx, certs.Config{Mode: certs.ModeSelfSigned})
	if err != nil {
		return err
	}
	defer tls.Stop()
	certFile := filepath.Join(*df.dir, "conn.pem")
	if err := os.WriteFile(certFile, tls.PEM, 0o644); err != nil {
		return err
	}
	parts, connURLs, err := devServers(p, tls, addrs, lns, creds.simulated, c.log)
	if err != nil {
		return err
	}
	// The command line is this binary, which scripts/dev builds outside
	// the PATH: the banner names it by its path.
	bin, err := os.Executable()
	if err != nil {
		bin = "switchboard"
	}
	err = devBanner.Execute(c.Stdout, map[string]any{
		"Bin": bin, "Edge": "http://" + advertised(addrs[0], lns[0]), "Ops": ops, "SignIn": creds.signIn, "Conn": connURLs, "DB": dbURL, "Key": creds.apiKey, "Dir": *df.dir,
		"Cert": certFile, "Fingerprint": tls.Fingerprint, "Devices": len(creds.simulated), "Spare": creds.spare.Secret,
	})
	if err != nil {
		return err
	}
	return p.Run(ctx, parts...)
}

// listenAll listens on each address, or on none.
func listenAll(addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll(lns)
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// startDevDatabase starts the private PostgreSQL in dir/pg, on a free port
// if port is taken, and creates the database whose URL it returns. dir is
// a folder others may enter, since as root the cluster runs as the
// postgres user. stop stops the cluster.
func startDevDatabase(ctx context.Context, dir string, port int, c call) (url string, stop func(), err error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", nil, err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", nil, err
	}
	fmt.Fprintln(c.Stderr, "starting a private PostgreSQL in", filepath.Join(dir, "pg"))
	cluster, err := pgcluster.Start(ctx, filepath.Join(dir, "pg"), pgcluster.Options{Port: port})
	if err != nil && port != 0 {
		c.log.Warn("PostgreSQL port taken; using a free one", "port", port, "err", err)
		cluster, err = pgcluster.Start(ctx, filepath.Join(dir, "pg"), pgcluster.Options{})
	}
	if err != nil {
		return "", nil, err
	}
	stop = func() {
		if err := cluster.Stop(); err != nil {
			c.log.Error("stopping PostgreSQL", "err", err)
		}
	}
	if url, err = cluster.CreateDatabase(ctx, "switchboard"); err != nil {
		stop()
		return "", nil, err
	}
	return url, stop, nil
}

// devCredentials are what "dev" provisions: an API key (and a link that
// signs the console in as it), the simulated devices, and one spare device
// for a client of your own.
type devCredentials struct {
	apiKey, signIn string
	simulated      []secret.Credential
	spare          secret.Credential
}

// provisionDev provisions the credentials and writes them to dir/api-key
// and dir/devices.csv.
func provisionDev(ctx context.Context, store *db.Store, dir string, devices int) (devCredentials, error) {
	var dc devCredentials
	dc.apiKey = secret.New("sbk_")
	devKey, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "dev", KeyHash: secret.Hash(dc.apiKey)})
	if err != nil {
		return dc, err
	}
	// A one-time link signs the browser in to the console as that key
	// (within 10 minutes; then sign in by pasting the key).
	if dc.signIn, err = console.NewSignInLink(ctx, store, devKey.ID); err != nil {
		return dc, err
	}
	var creds []secret.Credential
	var dbCreds []db.Credential
	for i := 1; i <= devices+1; i++ {
		c := secret.Credential{ID: fmt.Sprintf("thermostat-%d", i), Secret: secret.New("")}
		if i > devices {
			c.ID = "my-device"
		}
		creds = append(creds, c)
		dbc := db.Credential{ID: c.ID, SecretHash: secret.Hash(c.Secret)}
		if i <= devices { // labels to try the listing's filters on
			dbc.Labels = map[string]string{"model": "thermostat", "room": devRooms[(i-1)%len(devRooms)]}
		}
		dbCreds = append(dbCreds, dbc)
	}
	if _, err := store.AddDevices(ctx, dbCreds); err != nil {
		return dc, err
	}
	dc.simulated, dc.spare = creds[:devices], creds[devices]
	var csv strings.Builder
	for _, c := range creds {
		_ = secret.WriteCredential(&csv, c)
	}
	if err := os.WriteFile(filepath.Join(dir, "devices.csv"), []byte(csv.String()), 0o600); err != nil {
		return dc, err
	}
	return dc, os.WriteFile(filepath.Join(dir, "api-key"), []byte(dc.apiKey+"\n"), 0o600)
}

// devServers are the edge (on lns[0]), the two nodes (on lns[1] and
// lns[2]), the ops listener (on lns[3], if there) and the simulated
// devices, which alternate between the nodes; and the nodes' URLs.
func devServers(p *app.Process, tls *certs.TLS, addrs []string, lns []net.Listener, simulated []secret.Credential, log *slog.Logger) ([]app.Server, []string, error) {
	serveEdge, e, err := p.Edge(edge.Config{ID: edge.NewID("dev")}, maintenance.Config{}, certs.Config{}, lns[0])
	if err != nil {
		return nil, nil, err
	}
	if len(lns) > 3 {
		p.ServeOps(lns[3], e.NotReady) // one process: its metrics are the edge's and both nodes'
	}
	parts := []app.Server{app.UntilSignal, serveEdge}
	var connURLs []string
	for i, ln := range lns[1:3] {
		id := fmt.Sprintf("dev-%c", 'a'+i)
		serveNode, _, err := p.Node(conntier.Config{Node: db.Node{ID: id, Region: "local"}}, tls, ln)
		if err != nil {
			return nil, nil, err
		}
		parts = append(parts, serveNode)
		connURLs = append(connURLs, "wss://"+advertised(addrs[1+i], ln)+protocol.Path)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(tls.PEM)
	deviceTLS := &cryptotls.Config{RootCAs: roots}
	for i, url := range connURLs {
		var mine []secret.Credential
		for j := i; j < len(simulated); j += len(connURLs) {
			mine = append(mine, simulated[j])
		}
		// The simulation lasts as long as the process: a node given no
		// device, or whose devices all stopped (disabled, deleted), must
		// not end the others.
		parts = append(parts, func(ctx context.Context) error {
			err := simulate(ctx, mine, url, deviceTLS, 10*time.Second, log)
			<-ctx.Done()
			return err
		})
	}
	return parts, connURLs, nil
}

// advertised is the address to print for a listener: the host as given
// (localhost reads better than 127.0.0.1), the port as bound (for ":0").
func advertised(flag string, ln net.Listener) string {
	host, _, _ := net.SplitHostPort(flag)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if host == "" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

var devBanner = template.Must(template.New("banner").Parse(`
Switchboard is running. Ctrl-C stops everything.

  edge (HTTP API)    {{.Edge}}
  console            {{.Edge}}/  (sign in: {{.Edge}}{{.SignIn}}, once)
{{- if .Ops}}
  metrics            {{.Ops}}/metrics  (the ops listener: profiles at {{.Ops}}/debug/pprof/)
{{- end}}
  connection nodes   {{range .Conn}}{{.}}  {{end}}
  PostgreSQL         {{.DB}}
  devices            thermostat-1 … thermostat-{{.Devices}} (simulated), my-device (yours to connect)
  files              {{.Dir}}/api-key, {{.Dir}}/devices.csv, {{.Cert}}
  node certificate   self-signed, SHA-256 {{.Fingerprint}}

Try it:

  export SWITCHBOARD_KEY={{.Key}}
  export SWITCHBOARD_EDGE={{.Edge}}   # for the command line (below)

  # Send a command and follow it over Server-Sent Events:
  curl -N -H "Authorization: Bearer $SWITCHBOARD_KEY" -H 'Accept: text/event-stream' \
    -d '{"name":"set_target","args":{"celsius":21.5}}' {{.Edge}}/v1/devices/thermostat-1/commands

  # Or wait for the reply as plain JSON:
  curl -H "Authorization: Bearer $SWITCHBOARD_KEY" -d '{"name":"get_state"}' \
    '{{.Edge}}/v1/devices/thermostat-2/commands?wait=10s'

  # The same with the command line, through the edge (docs/cli.md):
  {{.Bin}} commands send thermostat-2 get_state -wait 10s

  # Desired state: a thermostat's new target, then its state once it reported back:
  {{.Bin}} state patch thermostat-1 '{"target_celsius":23,"mode":"cool"}'
  {{.Bin}} state get thermostat-1

  # A device, where it is connected and its latest telemetry; the devices online in the kitchen:
  curl -H "Authorization: Bearer $SWITCHBOARD_KEY" {{.Edge}}/v1/devices/thermostat-3
  curl -H "Authorization: Bearer $SWITCHBOARD_KEY" '{{.Edge}}/v1/devices?online=true&label=room=kitchen'

  # Follow the fleet's telemetry as it arrives (every 10 s per thermostat):
  curl -N -H "Authorization: Bearer $SWITCHBOARD_KEY" -H 'Accept: text/event-stream' {{.Edge}}/v1/events

  # One command to every thermostat, two a second; then follow the job to its end:
  curl -H "Authorization: Bearer $SWITCHBOARD_KEY" \
    -d '{"name":"get_state","target":{"label":"model=thermostat"},"rate":2}' {{.Edge}}/v1/jobs
  curl -N -H "Authorization: Bearer $SWITCHBOARD_KEY" -H 'Accept: text/event-stream' {{.Edge}}/v1/jobs/<id>

  # Who is connected where, as an operator sees it:
  psql '{{.DB}}' -c 'select * from presence_live'

  # Connect my-device with any WebSocket client (the device protocol: docs/protocol.md):
  #   URL {{index .Conn 0}}, subprotocol switchboard.v1,
  #   HTTP Basic auth my-device:{{.Spare}}, trusting {{.Cert}}
  # or with an SDK in Go, TypeScript or Python (README.md, "Writing a device"):
  #   SWITCHBOARD_URL={{index .Conn 0}} SWITCHBOARD_DEVICE_ID=my-device \
  #   SWITCHBOARD_DEVICE_SECRET={{.Spare}} SWITCHBOARD_CA={{.Cert}} go run ./device/examples/minimal

`))
