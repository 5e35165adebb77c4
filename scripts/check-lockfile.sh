#!/usr/bin/env bash
# Fails when `npm install` would rewrite the committed package-lock.json (a lockfile that
# is out of date surprises every fresh clone). Resolves from the lockfile and the npm
# registry (or npm's cache); runs no scripts and leaves node_modules alone.
set -euo pipefail
cd "$(dirname "$0")/.."
saved=$(mktemp)
trap 'cp "$saved" package-lock.json; rm -f "$saved"' EXIT
cp package-lock.json "$saved"
npm install --package-lock-only --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
if ! cmp -s "$saved" package-lock.json; then
  diff -u "$saved" package-lock.json | head -n 40 || true
  echo "package-lock.json is out of date: npm install changes it (above). Run npm install and commit package-lock.json."
  exit 1
fi
echo "package-lock.json is what npm install writes"
