#!/usr/bin/env bash
# Run the Python SDK's tests with Debian's Python and websockets (PyPI is
# not needed): installs python3-websockets when it is missing and we are
# root with apt-get, else skips with a message. scripts/test calls it.
set -euo pipefail
cd "$(dirname "$0")"
py=/usr/bin/python3
if [ ! -x "$py" ]; then
	echo "sdk/python: skipped: $py (Debian's Python 3.11+) is not installed" >&2
	exit 0
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
	echo "sdk/python: skipped: $py is older than Python 3.11" >&2
	exit 0
fi
if ! "$py" -c 'import websockets' 2>/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "sdk/python: installing python3-websockets (Debian's package)..." >&2
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-websockets >&2
	else
		echo "sdk/python: skipped: python3-websockets is missing (as root: apt-get install python3-websockets)" >&2
		exit 0
	fi
fi
exec "$py" -m unittest discover -s tests "$@"
