package cli

import (
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5"

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

// runDev runs the whole system in one process on a private PostgreSQL: one
// edge, two connection nodes and simulated thermostats. Its database is new
// on every run.
func runDev(ctx context.Context, args []string, getenv Env, stdio IO, log *slog.Logger) error {
	f := newFlags("dev", getenv, stdio)
	dir := f.string("dir", filepath.Join(os.TempDir(), fmt.Sprintf("switchboard-dev-%d", os.Getuid())), "folder for the database, the API key and the node certificate (wiped on start)")
	edgeListen := f.string("edge-listen", "localhost:8080", "address of the edge", "EDGE_LISTEN")
	connListen := f.string("conn-listen", "localhost:8443,localhost:8444", "addresses of the two connection nodes")
	pgPort := f.Int("pg-port", 54329, "port of the private PostgreSQL (0: any free port)")
	devices := f.Int("devices", 6, "simulated thermostats")
	if err := f.parse(args); err != nil {
		return err
	}
	connAddrs := splitList(*connListen)
	if len(connAddrs) != 2 {
		return fmt.Errorf("-conn-listen: want two addresses, got %q", *connListen)
	}

	// Claim the ports before touching the database: a second "dev" must not
	// wipe the first one's.
	edgeLn, err := net.Listen("tcp", *edgeListen)
	if err != nil {
		return fmt.Errorf("is another switchboard dev running? %w", err)
	}
	defer edgeLn.Close()
	var nodeLns []net.Listener
	for _, addr := range connAddrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("is another switchboard dev running? %w", err)
		}
		defer ln.Close()
		nodeLns = append(nodeLns, ln)
	}

	// Then the database, in a folder others may enter, since as root the
	// cluster runs as the postgres user.
	if err := os.MkdirAll(*dir, 0o711); err != nil {
		return err
	}
	if err := os.Chmod(*dir, 0o711); err != nil {
		return err
	}
	fmt.Fprintln(stdio.Stderr, "starting a private PostgreSQL in", filepath.Join(*dir, "pg"))
	cluster, err := pgcluster.Start(ctx, filepath.Join(*dir, "pg"), pgcluster.Options{Port: *pgPort})
	if err != nil && *pgPort != 0 {
		log.Warn("PostgreSQL port taken; using a free one", "port", *pgPort, "err", err)
		cluster, err = pgcluster.Start(ctx, filepath.Join(*dir, "pg"), pgcluster.Options{})
	}
	if err != nil {
		return err
	}
	defer func() {
		if err := cluster.Stop(); err != nil {
			log.Error("stopping PostgreSQL", "err", err)
		}
	}()
	dbURL, err := createDatabase(ctx, cluster.URL, "switchboard")
	if err != nil {
		return err
	}
	// One process, as in production: one pool and one listener connection
	// for the edge and both nodes.
	p, err := app.Open(ctx, dbURL+"&pool_max_conns=32", log)
	if err != nil {
		return err
	}
	defer p.Close()
	store := p.Store
	if err := db.Migrate(ctx, p.Pool, log); err != nil {
		return err
	}

	// Credentials: an API key and the simulated devices, plus one spare
	// device for a client of your own.
	apiKey := secret.New("sbk_")
	devKey, err := store.AddAPIKey(ctx, db.NewAPIKey{Name: "dev", KeyHash: secret.Hash(apiKey)})
	if err != nil {
		return err
	}
	// A one-time link signs the browser in to the console as that key
	// (within 10 minutes; then sign in by pasting the key).
	signIn, err := console.NewSignInLink(ctx, store, devKey.ID)
	if err != nil {
		return err
	}
	var creds []secret.Credential
	var dbCreds []db.Credential
	for i := 1; i <= *devices+1; i++ {
		c := secret.Credential{ID: fmt.Sprintf("thermostat-%d", i), Secret: secret.New("")}
		if i > *devices {
			c.ID = "my-device"
		}
		creds = append(creds, c)
		dc := db.Credential{ID: c.ID, SecretHash: secret.Hash(c.Secret)}
		if i <= *devices { // labels to try the listing's filters on
			dc.Labels = map[string]string{"model": "thermostat", "room": devRooms[(i-1)%len(devRooms)]}
		}
		dbCreds = append(dbCreds, dc)
	}
	if _, err := store.AddDevices(ctx, dbCreds); err != nil {
		return err
	}
	var csv strings.Builder
	for _, c := range creds {
		_ = secret.WriteCredential(&csv, c)
	}
	if err := os.WriteFile(filepath.Join(*dir, "devices.csv"), []byte(csv.String()), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "api-key"), []byte(apiKey+"\n"), 0o600); err != nil {
		return err
	}

	// One certificate for both nodes; the simulated devices trust it.
	tls, err := p.TLS(ctx, certs.Config{Mode: certs.ModeSelfSigned})
	if err != nil {
		return err
	}
	defer tls.Stop()
	certFile := filepath.Join(*dir, "conn.pem")
	if err := os.WriteFile(certFile, tls.PEM, 0o644); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(tls.PEM)

	serveEdge, _, err := p.Edge(edge.Config{ID: edge.NewID("dev")}, maintenance.Config{}, certs.Config{}, edgeLn)
	if err != nil {
		return err
	}
	parts := []app.Server{app.UntilSignal, serveEdge}
	var connURLs []string
	for i := range connAddrs {
		id := fmt.Sprintf("dev-%c", 'a'+i)
		serveNode, _, err := p.Node(conntier.Config{Node: db.Node{ID: id, Region: "local"}}, tls, nodeLns[i])
		if err != nil {
			return err
		}
		parts = append(parts, serveNode)
		connURLs = append(connURLs, "wss://"+advertised(connAddrs[i], nodeLns[i])+protocol.Path)
	}

	// Simulated devices alternate between the two nodes.
	simulated := creds[:*devices]
	deviceTLS := &cryptotls.Config{RootCAs: roots}
	for i, url := range connURLs {
		var mine []secret.Credential
		for j := i; j < len(simulated); j += len(connURLs) {
			mine = append(mine, simulated[j])
		}
		parts = append(parts, func(ctx context.Context) error { return simulate(ctx, mine, url, deviceTLS, 10*time.Second, log) })
	}

	err = devBanner.Execute(stdio.Stdout, map[string]any{
		"Edge": "http://" + advertised(*edgeListen, edgeLn), "SignIn": signIn, "Conn": connURLs, "DB": dbURL, "Key": apiKey, "Dir": *dir,
		"Cert": certFile, "Fingerprint": tls.Fingerprint, "Devices": len(simulated), "Spare": creds[len(creds)-1].Secret,
	})
	if err != nil {
		return err
	}
	return p.Run(ctx, parts...)
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

// createDatabase creates a database on a cluster and returns its URL.
func createDatabase(ctx context.Context, clusterURL, name string) (string, error) {
	conn, err := pgx.Connect(ctx, clusterURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	u, err := url.Parse(clusterURL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

var devBanner = template.Must(template.New("banner").Parse(`
Switchboard is running. Ctrl-C stops everything.

  edge (HTTP API)    {{.Edge}}
  console            {{.Edge}}/  (sign in: {{.Edge}}{{.SignIn}}, once)
  connection nodes   {{range .Conn}}{{.}}  {{end}}
  PostgreSQL         {{.DB}}
  devices            thermostat-1 … thermostat-{{.Devices}} (simulated), my-device (yours to connect)
  files              {{.Dir}}/api-key, {{.Dir}}/devices.csv, {{.Cert}}
  node certificate   self-signed, SHA-256 {{.Fingerprint}}

Try it:

  export SWITCHBOARD_KEY={{.Key}}

  # Send a command and follow it over Server-Sent Events:
  curl -N -H "Authorization: Bearer $SWITCHBOARD_KEY" -H 'Accept: text/event-stream' \
    -d '{"name":"set_target","args":{"celsius":21.5}}' {{.Edge}}/v1/devices/thermostat-1/commands

  # Or wait for the reply as plain JSON:
  curl -H "Authorization: Bearer $SWITCHBOARD_KEY" -d '{"name":"get_state"}' \
    '{{.Edge}}/v1/devices/thermostat-2/commands?wait=10s'

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

  # Connect my-device with any WebSocket client (see the README's device protocol):
  #   URL {{index .Conn 0}}, subprotocol switchboard.v1,
  #   HTTP Basic auth my-device:{{.Spare}}, trusting {{.Cert}}

`))
