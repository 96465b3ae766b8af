#!/usr/bin/env bash
# vm-test.sh BIN: the VM test bed (issue 15). A Debian root file system made
# with debootstrap (cached in $PROVD_VM_CACHE, default /var/cache/provd-vm),
# provd installed into it by `make install DESTDIR=`, an ext4 disk image made
# with mkfs.ext4 -d (no loop mounts), booted by qemu-system-x86_64 (KVM when
# /dev/kvm is usable, else TCG) with OVMF and a swtpm as the VM's TPM
# (tpm-crb). The guest runs test/vm/guest/vmtest.sh at each of five boots and
# reports over the serial console and a virtio-9p folder; this script waits for
# each report with a deadline, then replays the captured firmware event logs
# on the host. Everything lives in one temporary folder; every process started
# here is stopped by its pid on exit. README.md, "make vm-test", says more.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(readlink -f "${1:-$top/bin/provd}")
cache=${PROVD_VM_CACHE:-/var/cache/provd-vm}
ovmf_code=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
ovmf_vars=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
keep=${PROVD_VM_KEEP:-0}

die() { echo "vm-test: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
timing() { printf 'vm-test: TIMING %-34s %6ss\n' "$1" "$2" | tee -a "$timings"; }

for f in "$ovmf_code" "$ovmf_vars"; do
  [ -r "$f" ] || die "OVMF firmware $f missing (Debian package ovmf; make vm-test installs it)"
done
for b in qemu-system-x86_64 debootstrap swtpm swtpm_setup swtpm_localca mkfs.ext4 openssl go; do
  command -v "$b" >/dev/null || die "$b not found (make vm-test installs the Debian packages it needs)"
done
[ -x "$bin" ] || die "provd binary $bin missing (make vm-test builds it)"
[ "$(id -u)" = 0 ] || die "run as root: debootstrap and the root file system's owners need it"

run=$(mktemp -d "${TMPDIR:-/tmp}/provd-vm.XXXXXX")
timings="$run/timings.txt"
pids=()
vm_pids=() # the running boot's swtpm and qemu (section 5)
ok=0
cleanup() {
  local p
  for p in "${vm_pids[@]}" "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  if [ "$ok" = 1 ] && [ "$keep" = 0 ]; then
    rm -rf "$run"
  else
    echo "vm-test: the run's files are in $run (console.log, share/, timings.txt)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
t_all=$(now)
echo "vm-test: run folder $run"

# 1. The pristine root file system (cached), and this run's copy of it.
t=$(now)
tarball=$("$top/test/vm/rootfs.sh" "$cache")
timing "root file system (debootstrap/cache)" "$(since "$t")"
t=$(now)
root="$run/root"
mkdir -p "$root"
tar --numeric-owner --xattrs -xpf "$tarball" -C "$root"
make -s -C "$top" install DESTDIR="$root" > "$run/install.log" 2>&1 || { cat "$run/install.log" >&2; die "make install DESTDIR=$root"; }

# 2. The test image's own parts (never shipped): the checks and their units,
# the firmware images and their signed manifest, the officer's and the
# signer's keys, the TPM's manufacturer CA.
data="$root/usr/lib/provd-vmtest"
install -d -m 0755 "$data" "$root/usr/lib/provd/firmware/efi" "$root/etc/provd"
install -m 0755 "$top/test/vm/guest/vmtest.sh" "$data/vmtest.sh"
install -m 0644 "$top/test/vm/guest/provd-vmtest.service" "$top/test/vm/guest/provd-vmtest-emergency.service" "$root/etc/systemd/system/"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$data/officer.key.pem" 2>/dev/null
openssl pkey -in "$data/officer.key.pem" -pubout -out "$data/officer.pub.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$run/fw-signer.key.pem" 2>/dev/null
openssl pkey -in "$run/fw-signer.key.pem" -pubout -out "$data/fw-signer.pub.pem"
printf 'bootloader v1\n' > "$root/usr/lib/provd/firmware/bootloader.bin"
head -c 65536 /dev/urandom > "$root/usr/lib/provd/firmware/efi/grubx64.efi"
"$bin" fw sign --key "$run/fw-signer.key.pem" --images "$root/usr/lib/provd/firmware" --version 1 --class vmtest \
  --out "$root/etc/provd/fw.manifest" > /dev/null
printf 'a message the VM signs\n' > "$data/message"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
echo provd-vm > "$root/etc/hostname"
: > "$root/etc/machine-id"
systemctl --root="$root" enable provd.socket provd.service provd-vmtest.service provd-vmtest-emergency.service > "$run/enable.log" 2>&1 \
  || { cat "$run/enable.log" >&2; die "systemctl --root enable"; }

# 3. The TPM: a swtpm manufactured as provd's sim TPM is (EK certificates
# from a local CA), with the SHA-1 and SHA-256 banks active, as PC firmware
# usually finds them.
tpm="$run/tpm"; ca="$run/tpm-ca"
mkdir -p "$tpm" "$ca"
cat > "$ca/localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
printf -- '--platform-manufacturer provd\n--platform-version 2.0\n--platform-model swtpm\n' > "$ca/localca.options"
cat > "$ca/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $ca/localca.conf
create_certs_tool_options = $ca/localca.options
active_pcr_banks = sha1,sha256
CONF
swtpm_setup --tpm2 --tpmstate "$tpm" --create-ek-cert --create-platform-cert --config "$ca/swtpm_setup.conf" --overwrite \
  > "$run/swtpm_setup.log" 2>&1 || { cat "$run/swtpm_setup.log" >&2; die "swtpm_setup"; }
cat "$ca/swtpm-localca-rootca-cert.pem" "$ca/issuercert.pem" > "$run/ek-ca.pem"
cp "$run/ek-ca.pem" "$data/ek-ca.pem"

# The guest's network, for the fleet endpoint on this host: qemu's user-mode
# network, where 10.0.2.2 is this host's loopback; the guest reaches the
# endpoint by this host's name, which its TLS certificate carries.
fleet_host=$(hostname)
[ -n "$fleet_host" ] || die "this host has no name for the fleet endpoint's certificate"
printf '127.0.0.1 localhost\n127.0.1.1 provd-vm\n10.0.2.2 %s\n' "$fleet_host" > "$root/etc/hosts"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/80-vm.network"
systemctl --root="$root" enable systemd-networkd.service >> "$run/enable.log" 2>&1 || { cat "$run/enable.log" >&2; die "enable systemd-networkd"; }

# 4. The disk (ext4 from the folder, no loop device), the kernel and initrd
# for OVMF's direct kernel boot, this run's copy of the UEFI variables.
kernels=("$root"/boot/vmlinuz-*); initrds=("$root"/boot/initrd.img-*)
{ [ ${#kernels[@]} = 1 ] && [ ${#initrds[@]} = 1 ]; } || die "want one kernel and one initrd in the root file system: ${kernels[*]} ${initrds[*]}"
kernel=${kernels[0]}; initrd=${initrds[0]}
cp "$kernel" "$run/vmlinuz"; cp "$initrd" "$run/initrd.img"
cp "$ovmf_vars" "$run/OVMF_VARS.fd"
truncate -s 4G "$run/disk.img"
mkfs.ext4 -q -L provd-vm -d "$root" "$run/disk.img" || die "mkfs.ext4 -d"
rm -rf "$root"
timing "disk image (copy, install, mkfs)" "$(since "$t")"

# 5. swtpm, then qemu, once a boot: the guest's reboot ends qemu
# (-no-reboot), and the host starts both again on the same TPM state and
# UEFI variables, as a power cycle (a warm reset of OVMF under TCG hung now
# and then: no firmware output for 15 minutes after "reboot: machine
# restart"). swtpm ends with qemu's connection (--terminate); its state
# dir keeps the TPM's across the boots, as a TPM chip does. vm_pids holds
# the running boot's processes only (the cleanup stops them too).
start_swtpm() {
  rm -f "$run/swtpm.sock"
  swtpm socket --tpm2 --tpmstate dir="$tpm" --ctrl type=unixio,path="$run/swtpm.sock" \
    --log file="$run/swtpm.log",level=1 --terminate &
  vm_pids+=($!)
  for _ in $(seq 100); do [ -S "$run/swtpm.sock" ] && break; sleep 0.1; done
  [ -S "$run/swtpm.sock" ] || die "swtpm did not create its socket within 10s ($run/swtpm.log)"
}

# The fleet endpoint the guest attests to at its last boot: this host's
# provd fleet serve, on loopback, its certificate handed to the guest.
mkdir -p "$run/share/fleet"
PROVD_STATE_DIR="$run/endpoint" "$bin" fleet serve --listen 127.0.0.1:0 --ek-ca "$run/ek-ca.pem" 2> "$run/endpoint.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'serving https://' "$run/endpoint.log" 2>/dev/null && break; sleep 0.1; done
port=$(grep -o 'serving https://127.0.0.1:[0-9]*' "$run/endpoint.log" | grep -o '[0-9]*$' || true)
[ -n "$port" ] || die "provd fleet serve did not start within 10s: $(cat "$run/endpoint.log")"
printf 'https://%s:%s\n' "$fleet_host" "$port" > "$run/share/fleet/url"
cp "$run/endpoint/fleet/tls.crt" "$run/share/fleet/tls.crt"

# KVM when /dev/kvm is usable and is the hardware-assisted kind (kvm_intel,
# kvm_amd): other /dev/kvm providers (such as kvm_pvm in some sandboxes) run
# only paravirtualized guests, and OVMF stops there with "KVM internal error".
# PROVD_VM_ACCEL=kvm|tcg decides instead.
accel_kind=${PROVD_VM_ACCEL:-}
if [ -z "$accel_kind" ]; then
  accel_kind=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    accel_kind=kvm
  elif [ -e /dev/kvm ]; then
    echo "vm-test: /dev/kvm is not hardware-assisted KVM here (no kvm_intel or kvm_amd module): software emulation (TCG)"
  fi
fi
case $accel_kind in
  kvm) accel=(-accel kvm -cpu host); boot_limit=${PROVD_VM_BOOT_TIMEOUT:-240} ;;
  tcg) accel=(-accel tcg -cpu max); boot_limit=${PROVD_VM_BOOT_TIMEOUT:-900} ;;
  *) die "PROVD_VM_ACCEL=$accel_kind: want kvm or tcg" ;;
esac
check_limit=${PROVD_VM_CHECK_TIMEOUT:-$boot_limit}
mkdir -p "$run/share"
echo "vm-test: booting with ${accel[1]} (deadlines: ${boot_limit}s a boot, ${check_limit}s a boot's checks)"
start_qemu() {
  qemu-system-x86_64 -nodefaults -machine q35 "${accel[@]}" -smp 2 -m 2048 -no-reboot \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$ovmf_code" \
    -drive if=pflash,format=raw,unit=1,file="$run/OVMF_VARS.fd" \
    -kernel "$run/vmlinuz" -initrd "$run/initrd.img" \
    -append "console=ttyS0,115200 root=/dev/vda rw panic=-1 systemd.show_status=1" \
    -drive file="$run/disk.img",format=raw,if=virtio \
    -chardev socket,id=chrtpm,path="$run/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0 \
    -virtfs local,path="$run/share",mount_tag=host,security_model=none,id=host \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -display none -vga none -chardev file,id=ser0,path="$run/console.log",append=on -serial chardev:ser0 \
    >> "$run/qemu.log" 2>&1 &
  qemu=$!
  vm_pids+=("$qemu")
}
# stop_boot: qemu ends by itself (the guest rebooted or powered off), within
# 60s of its checks; then swtpm with it.
stop_boot() {
  local p
  for _ in $(seq 120); do kill -0 "$qemu" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$qemu" 2>/dev/null && die "the guest did not reboot or power off within 60s of its checks"
  wait "$qemu" || die "qemu exited with status $?"
  for p in "${vm_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  vm_pids=()
}
t_qemu=$(now)

# wait_console PATTERN SECONDS WHAT: the console shows PATTERN in time, or fail.
wait_console() {
  local pat=$1 limit=$2 what=$3 start
  start=$(date +%s)
  while ! grep -qaE "$pat" "$run/console.log" 2>/dev/null; do
    if ! kill -0 "$qemu" 2>/dev/null; then
      vm_report; die "qemu exited before $what (qemu.log: $(tail -3 "$run/qemu.log" | tr '\n' ' '))"
    fi
    if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
      vm_report; die "no $what within ${limit}s (console: $run/console.log)"
    fi
    sleep 0.5
  done
}
vm_report() {
  echo "---- the guest's reports"
  grep -aoE 'VMTEST .*' "$run/console.log" 2>/dev/null | tr -d '\r' || true
  echo "---- the console's last lines"
  tail -15 "$run/console.log" 2>/dev/null | tr -d '\r' || true
}

for p in 1 2 3 4 5; do
  t=$(now)
  start_swtpm
  start_qemu
  wait_console "VMTEST phase=$p begin" "$boot_limit" "boot $p"
  timing "boot $p: (re)start to the checks" "$(since "$t")"
  t=$(now)
  wait_console "VMTEST phase=$p done" "$check_limit" "end of boot $p's checks"
  timing "boot $p: the checks" "$(since "$t")"
  if grep -qaE "VMTEST phase=$p done failures=[1-9]" "$run/console.log"; then
    vm_report; die "boot $p's checks failed"
  fi
  stop_boot
done
timing "qemu: five boots in all" "$(since "$t_qemu")"

# 6. On the host: the guest's reports, the units it ran against the ones in
# systemd/, and the captured firmware logs replayed by provd's own code
# against the PCRs the guest read.
echo "---- the guest's reports"
grep -aoE 'VMTEST .*' "$run/console.log" | tr -d '\r'
npass=$(grep -c ' PASS ' "$run/share/results.txt" || true)
nfail=$(grep -c ' FAIL ' "$run/share/results.txt" || true)
[ "$nfail" = 0 ] || die "$nfail checks failed in the guest"
[ "$npass" -gt 0 ] || die "the guest reported no passing check"
(cd "$top" && sed "s|/lib/systemd/system/|systemd/|; s|/usr/lib/sysusers.d/provd.conf|systemd/provd.sysusers|" "$run/share/boot1/units.sha256" | sha256sum -c --quiet) \
  || die "the units the guest ran differ from systemd/"
echo "vm-test: host: the units the guest ran are systemd/'s, byte for byte"
for p in 1 2 3 4 5; do
  (cd "$top" && go run ./test/vm/replaycheck -log "$run/share/boot$p/bios_measurements.bin" -pcrs "$run/share/boot$p/pcrs.txt") \
    || die "boot $p's firmware log does not replay on the host"
done
if [ "${PROVD_VM_FIXTURE:-0}" = 1 ]; then
  cp "$run/share/boot1/bios_measurements.bin" "$top/attest/testdata/ovmf-bios-measurements.bin"
  cp "$run/share/boot1/pcrs.txt" "$top/attest/testdata/ovmf-pcrs.txt"
  echo "vm-test: fixture written: attest/testdata/ovmf-bios-measurements.bin, ovmf-pcrs.txt"
fi
PROVD_FLEET_CA="$run/endpoint/fleet/tls.crt" "$bin" fleet devices --endpoint "https://127.0.0.1:$port" \
  --token-file "$run/endpoint/fleet/operator.token" -o json > "$run/fleet-devices.json" \
  || die "provd fleet devices: $(cat "$run/fleet-devices.json")"
grep -q '"last_verdict": *"pass"' "$run/fleet-devices.json" || die "the fleet endpoint has no device whose last attestation passed: $(cat "$run/fleet-devices.json")"
echo "vm-test: host: the fleet endpoint lists the VM: $(tr -d '\n' < "$run/fleet-devices.json" | head -c 400)"
timing "vm-test in all" "$(since "$t_all")"
echo "vm-test: the guest's checks passed, and on the host the units' bytes, five firmware logs' replay and the fleet's verdict"
# The closing line in the form CI reads: the guest's checks and the host's
# (units, one replay a boot, the fleet endpoint's verdict).
echo "vm-test: $((npass + 7)) passed, 0 failed"
ok=1
