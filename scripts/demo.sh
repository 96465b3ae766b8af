#!/usr/bin/env bash
# demo.sh BIN: walks through what provd can do, against a swtpm that provd starts
# itself (--tpm sim), with all state in a fresh .demo/ folder. It grows as
# features land.
set -euo pipefail
bin=$(readlink -f "${1:-bin/provd}")
top=$(cd "$(dirname "$0")/.." && pwd)
demo="$top/.demo"
rm -rf "$demo"; mkdir -p "$demo"; chmod 700 "$demo"
export PROVD_TPM=sim PROVD_STATE_DIR="$demo/state"
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "provd's version, and whether Go's FIPS 140-3 module is on" \
  "$bin" version
step "The TPM: provd manufactures a swtpm with EK certificates on first use" \
  "$bin" tpm info
step "The same as JSON, for scripts (EK certificates shown)" \
  sh -c "'$bin' tpm info -o json | sed -n '/ek_certificates/,\$p'"
printf '\nDemo state is in %s (rm -rf it when done).\n' "$demo"
