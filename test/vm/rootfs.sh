#!/usr/bin/env bash
# rootfs.sh CACHE_DIR: prints the path of a pristine Debian root file system
# tarball for the VM test bed, building it with debootstrap when the cache has
# none for this recipe. The recipe is this file plus the mirror apt uses: the
# tarball's name carries their hash, so a changed package list or mirror builds
# a new one. Nothing outside CACHE_DIR is written.
set -euo pipefail

cache=${1:?usage: rootfs.sh CACHE_DIR}
suite=bookworm
# What the guest needs: systemd as PID 1 (and udev, dbus for systemctl and
# logind-free operation), a kernel with its initramfs (virtio, ext4, tpm_crb,
# 9p as modules), tpm2-tools and openssl as independent checkers, passwd for
# the test users.
include=systemd,systemd-sysv,udev,dbus,kmod,linux-image-amd64,initramfs-tools,tpm2-tools,openssl,passwd,procps

# The mirror apt on this machine uses for $suite (deb822 or one-line sources).
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk -v s="$suite" '
      /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) ok=1}
      /^$/ {if (ok && u) {print u; exit} ok=0; u=""}
      END {if (ok && u) print u}' "$f" | head -1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$f" ] || continue
    awk -v s="$suite" '$1=="deb" && $3==s {print $2; exit}' "$f"
  done
}
url=$(mirror | head -1)
[ -n "$url" ] || { echo "rootfs: no apt source for $suite found in /etc/apt" >&2; exit 1; }

key=$( { cat "$0"; echo "$url"; } | sha256sum | cut -c1-16)
tarball="$cache/rootfs-$suite-$key.tar"
if [ -s "$tarball" ]; then
  echo "rootfs: cached $tarball" >&2
  echo "$tarball"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "rootfs: debootstrap $suite from $url (recipe $key); this takes minutes" >&2
if ! debootstrap --variant=minbase --include="$include" "$suite" "$work/root" "$url" > "$work/debootstrap.log" 2>&1; then
  tail -30 "$work/debootstrap.log" >&2
  echo "rootfs: debootstrap failed (full log above, last lines)" >&2
  exit 1
fi
ls "$work"/root/boot/vmlinuz-* "$work"/root/boot/initrd.img-* >/dev/null \
  || { echo "rootfs: no kernel or initramfs in the root file system" >&2; exit 1; }
# Package caches are not part of the image.
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "rootfs: built $tarball in $(( $(date +%s) - start ))s" >&2
echo "$tarball"
