# Shared by scripts/dev and scripts/test: make sure Go and the PostgreSQL
# server binaries are here, installing PostgreSQL when we may.

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
