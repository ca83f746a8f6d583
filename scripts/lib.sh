# Shared by scripts/dev, scripts/test and scripts/fuzz: make sure Go, the
# PostgreSQL server binaries and (for scripts/test) Caddy and Chromium are
# here, installing them when we may; find and run the fuzz targets.

ensure_go() {
	if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
		export PATH="$PATH:/usr/local/go/bin"
	fi
	if ! command -v go >/dev/null 2>&1; then
		echo "Go 1.26 or newer is required: https://go.dev/doc/install" >&2
		exit 1
	fi
}

have_postgres() {
	[ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ] && return 0
	command -v initdb >/dev/null 2>&1 && return 0
	compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

ensure_postgres() {
	if have_postgres && { [ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1; }; then
		return
	fi
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing PostgreSQL (Debian's postgresql package)..." >&2
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
		have_postgres && return
	fi
	cat >&2 <<'MSG'
The PostgreSQL server binaries (initdb, pg_ctl, postgres) are required.
  Debian/Ubuntu:  sudo apt-get install postgresql
  Fedora:         sudo dnf install postgresql-server
  macOS:          brew install postgresql
Or set PG_BIN to the folder that holds initdb.
MSG
	exit 1
}

# CADDY_VERSION is the Caddy that ensure_caddy builds with "go install"
# when there is none on PATH and Debian's package cannot be installed.
CADDY_VERSION=v2.11.9

# ensure_caddy finds a caddy binary for validating the Caddyfile and for the
# tests that proxy through it, and exports its path as CADDY_BIN: $CADDY_BIN
# if set, else caddy on PATH, else one built before into the tools cache,
# else Debian's caddy package (as root), else "go install" into the tools
# cache (outside the repository: a few minutes, once per machine).
ensure_caddy() {
	local tools
	tools="$(go env GOCACHE)/../switchboard-tools"
	if [ -n "${CADDY_BIN:-}" ] && [ -x "$CADDY_BIN" ]; then
		export CADDY_BIN
		return
	fi
	if command -v caddy >/dev/null 2>&1; then
		CADDY_BIN=$(command -v caddy)
		export CADDY_BIN
		return
	fi
	if [ -x "$tools/caddy" ]; then
		CADDY_BIN=$tools/caddy
		export CADDY_BIN
		return
	fi
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing Caddy (Debian's caddy package)..." >&2
		if apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy >&2 &&
			command -v caddy >/dev/null 2>&1; then
			# The package enables a caddy service on port 80: the tests
			# only need the binary.
			if [ -d /run/systemd/system ]; then
				systemctl disable --now caddy >/dev/null 2>&1 || true
			fi
			CADDY_BIN=$(command -v caddy)
			export CADDY_BIN
			return
		fi
		echo "Debian's caddy package is not available; building Caddy instead" >&2
	fi
	echo "building Caddy $CADDY_VERSION into $tools (go install; a few minutes, once)..." >&2
	mkdir -p "$tools"
	if ! GOBIN=$(cd "$tools" && pwd) go install "github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION" >&2; then
		echo "Caddy is required to test the Caddyfile: install it (https://caddyserver.com/docs/install) or set CADDY_BIN" >&2
		exit 1
	fi
	CADDY_BIN=$(cd "$tools" && pwd)/caddy
	export CADDY_BIN
}

# ensure_chromium finds a Chromium for the console's browser tests and
# exports its path as CHROMIUM_BIN: $CHROMIUM_BIN if set, else chromium,
# chromium-browser or google-chrome on PATH, else Debian's chromium package
# (as root). There is no build-from-source fallback as for Caddy: a browser
# is far too big to build here, so without root we say what to install.
ensure_chromium() {
	local name
	if [ -n "${CHROMIUM_BIN:-}" ] && [ -x "$CHROMIUM_BIN" ]; then
		export CHROMIUM_BIN
		return
	fi
	for name in chromium chromium-browser google-chrome; do
		if command -v "$name" >/dev/null 2>&1; then
			CHROMIUM_BIN=$(command -v "$name")
			export CHROMIUM_BIN
			return
		fi
	done
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing Chromium (Debian's chromium package; a minute or two, once)..." >&2
		if apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 &&
			command -v chromium >/dev/null 2>&1; then
			CHROMIUM_BIN=$(command -v chromium)
			export CHROMIUM_BIN
			return
		fi
	fi
	cat >&2 <<'MSG'
Chromium is required for the console's browser tests.
  Debian:         sudo apt-get install chromium
  Ubuntu:         sudo snap install chromium (or Google Chrome)
  Fedora:         sudo dnf install chromium
  macOS:          brew install --cask chromium
Or set CHROMIUM_BIN to a Chromium or Chrome binary.
MSG
	exit 1
}

# ensure_prometheus finds prometheus and promtool, for checking and
# unit-testing the alerting rules (deploy/prometheus) and for the test that
# scrapes a running system with a real Prometheus, and exports their paths
# as PROMETHEUS_BIN and PROMTOOL_BIN: those if set, else the binaries on
# PATH, else Debian's prometheus package (as root). Without them the tests
# that need them are skipped, and say so.
ensure_prometheus() {
	if { [ -z "${PROMETHEUS_BIN:-}" ] || [ -z "${PROMTOOL_BIN:-}" ]; } &&
		! { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } &&
		[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing Prometheus (Debian's prometheus package)..." >&2
		apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >&2 || true
		# The package enables a prometheus service: the tests only need
		# the binaries.
		if [ -d /run/systemd/system ]; then
			systemctl disable --now prometheus >/dev/null 2>&1 || true
		fi
	fi
	if [ -z "${PROMETHEUS_BIN:-}" ] && command -v prometheus >/dev/null 2>&1; then
		PROMETHEUS_BIN=$(command -v prometheus)
	fi
	if [ -z "${PROMTOOL_BIN:-}" ] && command -v promtool >/dev/null 2>&1; then
		PROMTOOL_BIN=$(command -v promtool)
	fi
	if [ -n "${PROMETHEUS_BIN:-}" ] && [ -n "${PROMTOOL_BIN:-}" ]; then
		export PROMETHEUS_BIN PROMTOOL_BIN
		return
	fi
	echo "prometheus and promtool not found (Debian: apt-get install prometheus): the Prometheus tests will be skipped" >&2
}

# ensure_node finds npx (Node.js and npm) for TestOpenAPITools, which runs
# the pinned OpenAPI linter and client generator on the API's description:
# npx on PATH, else Debian's nodejs and npm packages (as root). Without it
# the test is skipped, and says so: the rest of the suite does not need it.
# The tools want Node.js 20.19 or newer (Debian 12's package is 18; see
# https://nodejs.org/en/download for a newer one).
ensure_node() {
	if ! command -v npx >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing Node.js and npm (Debian's nodejs and npm packages)..." >&2
		apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2 || true
	fi
	if ! command -v npx >/dev/null 2>&1; then
		echo "npx not found: TestOpenAPITools will be skipped (install Node.js 20.19+ and npm to run it)" >&2
		return
	fi
	local major
	major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
	if [ "$major" -lt 20 ]; then
		echo "Node.js $(node --version 2>/dev/null) is too old for TestOpenAPITools' tools: it wants 20.19 or newer" >&2
	fi
}

# ensure_python_websockets makes Debian's Python (/usr/bin/python3, 3.11+)
# able to import websockets, for the Python device SDK's tests and its
# conformance run: Debian's python3-websockets package (PyPI is not
# reachable from every machine), installed as root when missing. Without
# it those tests are skipped, and say so.
ensure_python_websockets() {
	if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import websockets' 2>/dev/null &&
		[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing python3-websockets (Debian's package) for the Python SDK's tests..." >&2
		apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-websockets >&2 || true
	fi
}

# fuzz_targets prints "package-dir FuzzName" for each fuzz target.
fuzz_targets() {
	grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . |
		sed -E 's#^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)\($#\1 \2#' | sort
}

# fuzz_all TIME [MINIMIZE] fuzzes each target for TIME in turn (go test
# -fuzz takes one target of one package at a time), minimizing a new input
# for at most MINIMIZE. New inputs go to Go's cache, not to the tree; a
# failing one is written under its package's testdata/fuzz/, and the run
# stops there. With QUIET=1 only a failure prints more than a line.
# TIME is best a count of runs (10000x): with a duration, Go 1.26's fuzz
# coordinator can report its own deadline as a failure, "context deadline
# exceeded" with no failing input (go.dev/issue/75804, fixed in Go 1.27),
# and it did so in CI.
fuzz_all() {
	local fuzztime=$1 minimize=${2:-5s} target dir name out
	local -a targets
	mapfile -t targets < <(fuzz_targets)
	for target in "${targets[@]}"; do
		read -r dir name <<<"$target"
		if [ "${QUIET:-}" = 1 ]; then
			if ! out=$(go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "$dir" 2>&1); then
				echo "$out"
				return 1
			fi
			echo "fuzzed $name for $fuzztime: ok"
		else
			echo "== $name ($dir) for $fuzztime"
			go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "$dir"
		fi
	done
}
