#!/usr/bin/env bash
# Test the TypeScript device SDK: install its locked dependencies (npm ci),
# compile it with tsc to dist/, and run its tests (node --test): unit tests
# and tests against a real TLS WebSocket server over loopback. Needs Node.js
# 18+ and npm; scripts/test calls it.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
npm run --silent build
node --test dist/test/*.test.js
