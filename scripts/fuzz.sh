#!/usr/bin/env bash
# fuzz.sh TIME: runs every Go fuzz target of the module for TIME each.
# A new input that widens coverage is minimized before the worker goes on,
# for up to a minute by default: targets whose inputs are large and costly
# (EK certificates, sealed blobs) spent whole runs minimizing, tens of
# executions in 8 s. FUZZMIN bounds it (2s here).
set -euo pipefail
t=${1:-20s}
min=${FUZZMIN:-2s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "== $pkg $f ($t)"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime "$min" "$pkg"
  done
done
