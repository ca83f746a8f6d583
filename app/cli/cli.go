// Package cli is the switchboard command: one binary whose subcommands run
// each part of the system. Every flag can also be set by the environment
// variable named in its help text; a flag given on the command line wins.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/term"

	"github.com/switchboard-iot/switchboard/db"
)

// Env is how the command reads its environment (os.Getenv in production).
type Env func(string) string

// IO is the command's standard streams.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

const usage = `usage: switchboard <command> [flags]

commands:
  edge                  serve the HTTP API (REST + SSE)
  conn                  serve device WebSockets (a connection node)
  migrate               apply database migrations
  dev                   run everything locally: private PostgreSQL, an edge, two nodes, simulated devices
  device                run simulated devices
  devices add ID        provision a device; prints its secret
  devices import        provision devices from stdin ("id" or "id,secret" lines); prints "id,secret" lines
  devices rotate ID     give a device a new secret (the old one works for -grace, 24h); prints it
  devices disable ID    refuse the device's connections and close its session
  devices enable ID     let a disabled device connect again
  devices delete ID     delete a device and its commands, events and history; close its session
  devices list          list devices as a table (-online, -node, -region, -label SEL, -q PART, -limit N)
  devices label ID k=v  set labels (key=value) and delete them (key-)
  apikeys add NAME      create an API key (-scopes commands,read,admin; -expires 720h); prints it
  apikeys list          list API keys (never their secrets)
  apikeys revoke KEY    revoke an API key, by name or id
  commands send DEVICE NAME  send a command (-args JSON); prints its id, or with -wait 10s or -follow its end
  commands get ID       a command: its status, result or error
  commands list         commands, newest first (-device, -status, -name, -job, -since, -until, -limit)
  commands cancel ID    cancel a command its device has not been given yet
  jobs start NAME       send a command to many devices (-all, -label, -region or -devices; -rate, -retry, -follow)
  jobs list             jobs, newest first (-status, -limit)
  jobs get ID           a job and its progress (-follow: until it ends)
  jobs cancel ID        cancel a scheduled or running job
  jobs results ID       a job's commands, a device each (-status, -device, -error, -attempts all)
  state get DEVICE      a device's desired and reported state and delta (-follow: each change)
  state patch DEVICE P  change its desired state by a JSON merge patch (-if-match VERSION)
  loadgen               hold many devices and/or send commands at a rate; prints a summary
  conformance           test a device implementation (-device-cmd "..."): a private system, scenarios, pass/fail
  version               the build: version, commit, Go version

"devices" and "apikeys" work on the database (DATABASE_URL), or on an edge's
API like "commands", "jobs" and "state": -edge URL (SWITCHBOARD_EDGE) with the API key
in SWITCHBOARD_KEY (or -key-file FILE). -json prints JSON instead of tables.

Run "switchboard <command> -h" for a command's flags.
`

// commands are the subcommands, by name. Each defines its flags (a struct
// of their values, made by a define function), parses them with flags.parse
// and runs with the struct: one shape for all of them.
var commands = map[string]command{
	"edge":        cmd[edgeFlags]{define: defineEdgeFlags, run: runEdge},
	"conn":        cmd[connFlags]{define: defineConnFlags, run: runConn},
	"migrate":     cmd[storeFlags]{define: defineStoreFlags, run: runMigrate},
	"dev":         cmd[devFlags]{define: defineDevFlags, run: runDev},
	"device":      cmd[deviceFlags]{define: defineDeviceFlags, run: runDevice},
	"devices":     devicesCommands,
	"apikeys":     apikeysCommands,
	"commands":    commandsCommands,
	"jobs":        jobsCommands,
	"state":       stateCommands,
	"version":     cmd[versionFlags]{define: defineVersionFlags, run: runVersion, nargs: exactly(0)},
	"loadgen":     cmd[loadgenFlags]{define: defineLoadgenFlags, run: runLoadgen},
	"conformance": cmd[conformanceFlags]{define: defineConformanceFlags, run: runConformance, nargs: exactly(0)},
}

// ErrUsage means the command line was wrong; the message went to stderr.
var ErrUsage = errors.New("usage")

// Run runs the command line args (without the program name).
func Run(ctx context.Context, args []string, getenv Env, stdio IO) error {
	if len(args) == 0 {
		fmt.Fprint(stdio.Stderr, usage)
		return ErrUsage
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprint(stdio.Stdout, usage)
		return nil
	}
	if c, ok := commands[args[0]]; ok {
		err := c.exec(ctx, args[0], args[1:], call{getenv: getenv, IO: stdio})
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	fmt.Fprintf(stdio.Stderr, "switchboard: unknown command %q\n\n%s", args[0], usage)
	return ErrUsage
}

// call is what a command runs with besides its flags.
type call struct {
	args   []string // the positional arguments, once the flags are parsed
	getenv Env
	IO
	log       *slog.Logger // made from -log-format and LOG_LEVEL once the flags are parsed
	logFormat string       // "json" or "text", resolved
	usage     string       // printed when the positional arguments are wrong: the group's
}

// command is an entry of a command table: it parses args, the command line
// after its name, and runs.
type command interface {
	exec(ctx context.Context, name string, args []string, c call) error
}

// cmd is a command whose flags are the struct F.
type cmd[F any] struct {
	define func(flags) F
	nargs  func(int) bool // whether it takes that many positional arguments (nil: any, unused)
	run    func(context.Context, F, call) error
}

func (c cmd[F]) exec(ctx context.Context, name string, args []string, cl call) error {
	f := newFlags(name, cl.getenv, cl.IO)
	values := c.define(f)
	format := defineLogFormat(f)
	if err := f.parse(args); err != nil {
		return err
	}
	var err error
	if cl.logFormat, err = resolveLogFormat(*format, cl.Stderr); err != nil {
		fmt.Fprintf(cl.Stderr, "switchboard %s: %v\n", name, err)
		return ErrUsage
	}
	cl.log = newLogger(cl.getenv, cl.Stderr, cl.logFormat)
	if c.nargs != nil && !c.nargs(f.NArg()) {
		fmt.Fprintln(cl.Stderr, cl.usage)
		return ErrUsage
	}
	cl.args = f.Args()
	return c.run(ctx, values, cl)
}

func exactly(n int) func(int) bool { return func(got int) bool { return got == n } }
func atLeast(n int) func(int) bool { return func(got int) bool { return got >= n } }

// group is a command of subcommands ("devices add ID"), by name. Its usage
// is printed when the subcommand is missing or unknown, or its positional
// arguments are wrong.
type group struct {
	usage string
	subs  map[string]command
}

func (g group) exec(ctx context.Context, name string, args []string, c call) error {
	if len(args) == 0 {
		fmt.Fprintln(c.Stderr, g.usage)
		return ErrUsage
	}
	sub, ok := g.subs[args[0]]
	if !ok {
		fmt.Fprintln(c.Stderr, g.usage)
		return ErrUsage
	}
	c.usage = g.usage
	return sub.exec(ctx, name+" "+args[0], args[1:], c)
}

// Log formats (-log-format).
const (
	logJSON = "json"
	logText = "text"
)

// defineLogFormat defines -log-format, which every command takes: every
// process logs to stderr, in one format chosen the same way.
func defineLogFormat(f flags) *string {
	return f.string("log-format", "", "log format on stderr: json (one object a line) or text; "+
		"default json, or text when stderr is a terminal", "SWITCHBOARD_LOG_FORMAT")
}

// resolveLogFormat checks a -log-format value; "" is the default: text
// for a person at a terminal, JSON for whatever collects the logs of a
// process whose stderr is a pipe or a file (a log shipper, journald, a
// container runtime), which parses JSON without guessing.
func resolveLogFormat(format string, stderr io.Writer) (string, error) {
	switch strings.ToLower(format) {
	case logJSON:
		return logJSON, nil
	case logText:
		return logText, nil
	case "":
		if isTerminal(stderr) {
			return logText, nil
		}
		return logJSON, nil
	}
	return "", fmt.Errorf("-log-format %q: want json or text", format)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// newLogger makes the process's logger: format as resolved, at the level
// LOG_LEVEL names (debug, info, warn, error; info when unset).
func newLogger(getenv Env, w io.Writer, format string) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(getenv("LOG_LEVEL")))
	return slog.New(newLogHandler(w, format, level))
}

func newLogHandler(w io.Writer, format string, level slog.Leveler) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if format == logText {
		return slog.NewTextHandler(w, opts)
	}
	return slog.NewJSONHandler(w, opts)
}

// flags is a flag set whose defaults come from the environment.
type flags struct {
	*flag.FlagSet
	getenv Env
	envErr *error // a variable that did not parse, reported by parse
}

func newFlags(name string, getenv Env, stdio IO) flags {
	fs := flag.NewFlagSet("switchboard "+name, flag.ContinueOnError)
	fs.SetOutput(stdio.Stderr)
	return flags{fs, getenv, new(error)}
}

// string defines a flag defaulting to the first of vars that is set, else def.
func (f flags) string(name, def, usage string, vars ...string) *string {
	for _, v := range vars {
		if x := f.getenv(v); x != "" {
			def = x
			break
		}
	}
	return f.String(name, def, usage+envNames(vars))
}

// float defines a number flag defaulting to the first of vars that is set,
// else def.
func (f flags) float(name string, def float64, usage string, vars ...string) *float64 {
	v := f.Float64(name, def, usage+envNames(vars))
	f.setFromEnv(name, vars, "a number")
	return v
}

// int defines an integer flag defaulting to the first of vars that is
// set, else def.
func (f flags) int(name string, def int, usage string, vars ...string) *int {
	v := f.Int(name, def, usage+envNames(vars))
	f.setFromEnv(name, vars, "a number")
	return v
}

// duration defines a duration flag defaulting to the first of vars that is
// set, else def.
func (f flags) duration(name string, def time.Duration, usage string, vars ...string) *time.Duration {
	v := f.Duration(name, def, usage+envNames(vars))
	f.setFromEnv(name, vars, "a duration such as 10s")
	return v
}

func (f flags) setFromEnv(name string, vars []string, want string) {
	for _, v := range vars {
		if x := f.getenv(v); x != "" {
			if err := f.Set(name, x); err != nil && *f.envErr == nil {
				*f.envErr = fmt.Errorf("%s=%q: want %s", v, x, want)
			}
			f.Lookup(name).DefValue = x
			return
		}
	}
}

func envNames(vars []string) string {
	if len(vars) == 0 {
		return ""
	}
	return " [env " + strings.Join(vars, ", ") + "]"
}

// storeFlags are the flags of a command that uses the database.
type storeFlags struct {
	url *string
}

func defineStoreFlags(f flags) storeFlags {
	url := f.string("database-url", "", "PostgreSQL URL (direct or session-pooled: LISTEN needs a session)", "DATABASE_URL")
	// -h must not print the URL taken from the environment: it may hold
	// a password.
	f.Lookup("database-url").DefValue = ""
	return storeFlags{url}
}

// given returns whether the flag name was on the command line, once it is
// parsed.
func (f flags) given(name string) func() bool {
	return func() bool {
		found := false
		f.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
		return found
	}
}

// errHelp ends a command whose flags were asked for (-h): Run returns nil.
var errHelp = errors.New("help shown")

// parse parses args, taking flags after the positional arguments too
// ("apikeys add NAME -scopes read"; Go's flag package stops at the first
// positional one), which f.Args() then returns. Everything after "--" is
// positional.
func (f flags) parse(args []string) error {
	var positional, rest []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, rest = args[:i], args[i+1:]
	}
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		if err != nil {
			return ErrUsage
		}
		if f.NArg() == 0 {
			break
		}
		positional = append(positional, f.Arg(0))
		args = f.Args()[1:]
	}
	// Parsing "--" and the positional arguments leaves them in f.Args().
	_ = f.Parse(append(append([]string{"--"}, positional...), rest...))
	return *f.envErr
}

func openStore(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, *db.Store, error) {
	if url == "" {
		return nil, nil, errors.New("a database URL is required: set DATABASE_URL or -database-url")
	}
	pool, err := db.Open(ctx, url, maxConns)
	if err != nil {
		return nil, nil, err
	}
	return pool, db.NewStore(pool), nil
}

// withStore opens the database of -database-url for the work of one
// command, and closes it after.
func (s storeFlags) withStore(ctx context.Context, work func(*db.Store) error) error {
	pool, store, err := openStore(ctx, *s.url, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	return work(store)
}
