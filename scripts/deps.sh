#!/usr/bin/env bash
# deps.sh PKG... -- BIN...: make sure every BIN is on PATH (or, for a BIN that
# is an absolute path, exists), installing the Debian packages PKG with apt-get
# when one is missing. Fails loudly; never skips.
set -euo pipefail
pkgs=(); bins=(); seen=0
for a in "$@"; do
  if [ "$a" = "--" ]; then seen=1; continue; fi
  if [ $seen = 0 ]; then pkgs+=("$a"); else bins+=("$a"); fi
done
have() { case $1 in /*) [ -e "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 ;; esac; }
missing=()
for b in "${bins[@]}"; do have "$b" || missing+=("$b"); done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: missing ${missing[*]}; installing: ${pkgs[*]}" >&2
if [ "$(id -u)" != 0 ]; then
  sudo=""
  command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ -z "$sudo" ]; then
    echo "deps: not root and no sudo: run as root, or: apt-get install ${pkgs[*]}" >&2
    exit 1
  fi
else
  sudo=""
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
for b in "${bins[@]}"; do
  have "$b" || { echo "deps: $b still missing after installing ${pkgs[*]}" >&2; exit 1; }
done
