#!/usr/bin/env bash
# Validates AsyncAPI documents with the official parser, @asyncapi/parser
# from the npm registry, pinned in tools/asyncapi/package-lock.json.
#
#   scripts/asyncapi-validate.sh [--strict] FILE...   validate (installing the parser first if needed)
#   scripts/asyncapi-validate.sh --install            install the parser only
#
# --strict fails on warnings as well as errors. Needs Node.js 18+ and npm.
# The parser goes into tools/asyncapi/node_modules (gitignored); install
# scripts of its dependencies are not run.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../tools/asyncapi" && pwd)"

command -v node >/dev/null 2>&1 || { echo "node not found: install Node.js 18+ and npm" >&2; exit 127; }
if [ ! -f "$dir/node_modules/@asyncapi/parser/package.json" ] \
  || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
  echo "installing @asyncapi/parser into $dir/node_modules" >&2
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi
if [ "${1:-}" = --install ]; then
  exit 0
fi
exec node "$dir/validate.mjs" "$@"
