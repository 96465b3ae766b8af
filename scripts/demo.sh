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
expect() { # expect CODE CMD...: run, show, and check the exit code
  local want=$1; shift; printf '$ %s\n' "$*"; set +e; "$@"; local got=$?; set -e
  printf '(exit %s)\n' "$got"; [ "$got" = "$want" ] || { echo "demo: expected exit $want" >&2; exit 1; }
}
json_num() { grep -o "\"$1\": [0-9]*" | head -1 | grep -o '[0-9]*$'; }

printf '\n\033[1m== Who is this TPM? Without the manufacturer certificates it is not trusted (exit 15)\033[0m\n'
expect 15 "$bin" tpm identity
cat "$demo/state/swtpm/ca/swtpm-localca-rootca-cert.pem" "$demo/state/swtpm/ca/issuercert.pem" > "$demo/ek-ca.pem"
step "With them: the EK certificate verified, the SRK authenticated through a session salted to the certified EK" \
  "$bin" tpm identity --ek-ca "$demo/ek-ca.pem"
export PROVD_EK_CA="$demo/ek-ca.pem" # provision establishes the identity the same way, and pins the SRK

step "Provision: the TPM's identity verified and pinned; the PK is born in the TPM, sealed to PCRs 7 and 15 as they are now" \
  "$bin" provision --pcrs 7,15
step "Seal a secret under the PK" \
  sh -c "printf 'disk-unlock-key' | '$bin' seal --in - --out '$demo/secret.sealed'"
step "Unseal it while the platform measures as provisioned" \
  "$bin" unseal --in "$demo/secret.sealed" --out -
echo
step "Something changes the boot chain: PCR 15 is extended" \
  "$bin" tpm pcr extend 15 --data "unexpected bootloader"
printf '\n\033[1m== Now the PK refuses to work: exit 3, naming the PCR that differs\033[0m\n'
expect 3 "$bin" unseal --in "$demo/secret.sealed" --out -
step "policy show says what the policy needs and what differs" \
  "$bin" policy show

printf '\n\033[1m== Signed policies: keys that survive firmware updates\033[0m\n'
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$demo/signer.key.pem" 2>/dev/null
openssl pkey -in "$demo/signer.key.pem" -pubout -out "$demo/signer.pub.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$demo/officer.key.pem" 2>/dev/null
openssl pkey -in "$demo/officer.key.pem" -pubout -out "$demo/officer.pub.pem"
step "Provision again (--force zeroizes the old PK) with PolicyAuthorize(signer), naming the crypto officer's approval key" \
  "$bin" provision --force --policy-signer "$demo/signer.pub.pem" --officer-key "$demo/officer.pub.pem"
counter=$("$bin" policy show -o json | json_num policy_counter)
"$bin" tpm pcr read --pcrs 7,15 -o json > "$demo/pcrs-now.json"
step "The signer approves today's PCR values (offline), version $counter" \
  "$bin" policy sign --signer "$demo/signer.key.pem" --pcr-values "$demo/pcrs-now.json" --version "$counter" --out "$demo/policy-v1.json"
step "Install it on the device" \
  "$bin" policy install "$demo/policy-v1.json"
step "Seal a secret to the signed policy, and unseal it" \
  sh -c "printf 'survives-updates' | '$bin' seal --in - --out '$demo/s2.sealed' && '$bin' unseal --in '$demo/s2.sealed' --out -; echo"
step "A firmware update changes PCR 15" \
  "$bin" tpm pcr extend 15 --data "firmware v2"
expect 3 "$bin" unseal --in "$demo/s2.sealed" --out -
"$bin" tpm pcr read --pcrs 7,15 -o json > "$demo/pcrs-v2.json"
step "The signer approves the new values as version $((counter + 1)): no re-provisioning" \
  "$bin" policy sign --signer "$demo/signer.key.pem" --pcr-values "$demo/pcrs-v2.json" --version "$((counter + 1))" --out "$demo/policy-v2.json"
step "Install it: the TPM's policy counter moves to $((counter + 1)), revoking version $counter" \
  "$bin" policy install "$demo/policy-v2.json"
step "The same sealed secret unseals again" \
  sh -c "'$bin' unseal --in '$demo/s2.sealed' --out -; echo"
printf '\n\033[1m== The old policy cannot be replayed: it is revoked in the TPM\033[0m\n'
expect 3 "$bin" policy install "$demo/policy-v1.json"

printf '\n\033[1m== Operational keys: derived inside the TPM, used through the PK policy\033[0m\n'
printf '\n\033[1m== Without the crypto officer'"'"'s approval of the recipe, the TPM derives nothing (exit 5)\033[0m\n'
expect 5 "$bin" key derive tls --label tls --context device-42 --type ecc-p256
pkpolicy=$("$bin" status -o json | grep -o '"policy_digest": *"[0-9a-f]*"' | head -1 | grep -o '[0-9a-f]\{64\}')
step "The officer approves the recipe offline, for this fleet's PK policy digest (the exact TPM template)" \
  "$bin" key approve --officer "$demo/officer.key.pem" --pk-policy "$pkpolicy" --type ecc-p256 --label tls --context device-42 --out "$demo/tls.approval.json"
step "Derive the TLS key (same recipe, same key on every boot; any other template under D fails in the TPM)" \
  "$bin" key derive tls --label tls --context device-42 --type ecc-p256 --approval "$demo/tls.approval.json"
printf 'firmware v2 image\n' > "$demo/firmware.bin"
"$bin" key pub tls --out "$demo/tls.pub.pem"
step "Sign with it inside the TPM; openssl verifies with the public key" \
  sh -c "'$bin' key sign tls --in '$demo/firmware.bin' --out '$demo/firmware.sig' && openssl dgst -sha256 -verify '$demo/tls.pub.pem' -signature '$demo/firmware.sig' '$demo/firmware.bin'"
step "What a one-shot sign costs: -v counts the TPM commands (the sim's start, the PK and D loads, the derivation under the officer's approval and the sign under one salted policy session, the sim's stop; docs/benchmarks.md)" \
  sh -c "'$bin' -v key sign tls --in '$demo/firmware.bin' --out '$demo/firmware.sig' 2>&1 | grep -E 'commands|written'"
step "A CSR signed by the TPM key; openssl req -verify checks it" \
  sh -c "'$bin' key csr tls --subject 'CN=device-42,O=Acme' --dns device-42.acme.example --out '$demo/tls.csr' && cat '$demo/tls.csr' && openssl req -in '$demo/tls.csr' -verify -noout -subject"
step "A random RSA key generated in the TPM, never extractable" \
  "$bin" key create fw-sign --type rsa-2048
step "The keys" \
  "$bin" key list
printf '\n\033[1m== Approved mode: RSA-1024 and SHA-1 are refused (exit 5)\033[0m\n'
expect 5 "$bin" key create weak --type rsa-1024
expect 5 "$bin" key sign tls --in "$demo/firmware.bin" --hash sha1
printf '\n\033[1m== A TPM cannot derive RSA: the refusal (exit 5) names the command to use\033[0m\n'
expect 5 "$bin" key derive rsa --label rsa --type rsa-2048
printf '\n\033[1m== Key ceremony: three custodians enter an AES-256 KEK as components, each with its key check value\033[0m\n'
kcv_of() { head -c 16 /dev/zero | openssl enc -aes-256-ecb -K "$1" -nopad | head -c 3 | od -An -tx1 | tr -d ' \n'; }
combined=""
for i in 1 2 3; do
  comp=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s\n%s\n' "$comp" "$(kcv_of "$comp")" > "$demo/custodian$i.txt"
  if [ -z "$combined" ]; then combined=$comp; else
    x=""; for o in 0 8 16 24 32 40 48 56; do x+=$(printf '%08x' $(( 0x${combined:$o:8} ^ 0x${comp:$o:8} ))); done; combined=$x
  fi
  printf 'custodian %d: component %s… KCV %s\n' "$i" "${comp:0:8}" "$(kcv_of "$comp")"
done
kcv=$(kcv_of "$combined")
printf '\n\033[1m== A KCV read off the wrong sheet: nothing is imported (exit 16)\033[0m\n'
expect 16 sh -c "'$bin' kek import backup-kek --components 3 --component-fd 3 --component-fd 4 --component-fd 5 --kcv 000000 3<'$demo/custodian1.txt' 4<'$demo/custodian2.txt' 5<'$demo/custodian3.txt'"
printf '\n\033[1m== Split knowledge: custodian 3 enters custodian 1'"'"'s sheet again, so that two components cancel and the key would be custodian 2'"'"'s alone: refused, naming no component (exit 2)\033[0m\n'
expect 2 sh -c "'$bin' kek import backup-kek --components 3 --component-fd 3 --component-fd 4 --component-fd 5 --kcv $kcv 3<'$demo/custodian1.txt' 4<'$demo/custodian2.txt' 5<'$demo/custodian1.txt'"
step "The right ones: each KCV checked, the KEK made in the TPM, and the TPM's own KCV of it is the custodians' ($kcv)" \
  sh -c "'$bin' kek import backup-kek --components 3 --component-fd 3 --component-fd 4 --component-fd 5 --kcv $kcv 3<'$demo/custodian1.txt' 4<'$demo/custodian2.txt' 5<'$demo/custodian3.txt'"
step "An RSA key born extractable (decided now, forever)" \
  "$bin" key create backup-me --type rsa-2048 --extractable
printf '\n\033[1m== Without the officer'"'"'s approval of this export, a key does not leave; one never born extractable never does (exit 5)\033[0m\n'
objname=$("$bin" key pub backup-me -o json | grep -o '"object_name": "[0-9a-f]*"' | grep -o '[0-9a-f]\{20,\}')
kekname=$("$bin" key list -o json | tr -d ' \n' | grep -o '"name":"backup-kek"[^}]*' | grep -o '"object_name":"[0-9a-f]*"' | grep -o '[0-9a-f]\{20,\}')
step "The officer approves exporting exactly this key under exactly the custodians' KEK, both by TPM name (offline; the TPM checks the key's part in its duplication branch, provd the KEK's)" \
  "$bin" key approve --officer "$demo/officer.key.pem" --pk-policy "$pkpolicy" --export --object-name "$objname" --kek-object-name "$kekname" --out "$demo/backup-me.export.json"
expect 5 "$bin" key export fw-sign --kek backup-kek --approval "$demo/backup-me.export.json" --out "$demo/fw-sign.kwp"
printf '\n\033[1m== Dual control: one operator alone enters a KEK of components it chose and asks for the approved export under it: refused, the approval names the custodians'"'"' KEK (exit 5)\033[0m\n'
for i in 1 2; do
  comp=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s\n%s\n' "$comp" "$(kcv_of "$comp")" > "$demo/mine$i.txt"
  if [ "$i" = 1 ]; then mine=$comp; else
    x=""; for o in 0 8 16 24 32 40 48 56; do x+=$(printf '%08x' $(( 0x${mine:$o:8} ^ 0x${comp:$o:8} ))); done; mine=$x
  fi
done
"$bin" kek import mine --components 2 --component-fd 3 --component-fd 4 --kcv "$(kcv_of "$mine")" 3<"$demo/mine1.txt" 4<"$demo/mine2.txt" >/dev/null
expect 5 "$bin" key export backup-me --kek mine --approval "$demo/backup-me.export.json" --out "$demo/backup-me.mine.kwp"
step "Export it: PKCS#8 under AES key wrap with padding (RFC 5649), wrapped inside the TPM with the KEK" \
  "$bin" key export backup-me --kek backup-kek --approval "$demo/backup-me.export.json" --out "$demo/backup-me.p8.kwp"
step "openssl unwraps it with the combined key; its public key is the TPM key's" \
  bash -c "openssl enc -d -id-aes256-wrap-pad -K $combined -iv A65959A6 -in '$demo/backup-me.p8.kwp' | openssl pkey -inform DER -pubout | diff - <('$bin' key pub backup-me) && echo 'public keys match'"
step "Recovery on an air-gapped host: the custodians' components, no TPM, no state" \
  sh -c "'$bin' --state-dir /nonexistent key recover --in '$demo/backup-me.p8.kwp' --components 3 --component-fd 3 --component-fd 4 --component-fd 5 --kcv $kcv --out '$demo/recovered.p8' 3<'$demo/custodian1.txt' 4<'$demo/custodian2.txt' 5<'$demo/custodian3.txt' && openssl pkey -inform DER -in '$demo/recovered.p8' -noout -text | head -1"
"$bin" key pub backup-me --out "$demo/backup-me.pub.pem"
printf '\n\033[1m== A second TPM (its own swtpm and state) takes the backup: the same ceremony there, then key import\033[0m\n'
"$bin" key create mover --type ecc-p256 --extractable >/dev/null
"$bin" key pub mover --out "$demo/mover.pub.pem"
mover=$("$bin" key pub mover -o json | grep -o '"object_name": "[0-9a-f]*"' | grep -o '[0-9a-f]\{20,\}')
(
  export PROVD_STATE_DIR="$demo/state-b"
  "$bin" tpm info >/dev/null # manufactures the second swtpm
  cat "$demo/state-b/swtpm/ca/swtpm-localca-rootca-cert.pem" "$demo/state-b/swtpm/ca/issuercert.pem" > "$demo/ek-ca-b.pem"
  step "Provision TPM B in the same fleet: the same policy signer and officer, its identity verified against its own manufacturer CA" \
    "$bin" provision --policy-signer "$demo/signer.pub.pem" --officer-key "$demo/officer.pub.pem" --ek-ca "$demo/ek-ca-b.pem"
  counter_b=$("$bin" policy show -o json | json_num policy_counter)
  "$bin" tpm pcr read --pcrs 7,15 -o json > "$demo/pcrs-b.json"
  "$bin" policy sign --signer "$demo/signer.key.pem" --pcr-values "$demo/pcrs-b.json" --version "$counter_b" --out "$demo/policy-b.json" >/dev/null
  step "The signer approves B's PCR values; B installs the policy" \
    "$bin" policy install "$demo/policy-b.json"
  step "The custodians enter the KEK on B, for unwrapping only (the TPM holds it to that direction; the KEK on A only wraps)" \
    sh -c "'$bin' kek import backup-kek --usage unwrap --components 3 --component-fd 3 --component-fd 4 --component-fd 5 --kcv $kcv 3<'$demo/custodian1.txt' 4<'$demo/custodian2.txt' 5<'$demo/custodian3.txt' | grep -i kcv"
  step "Import the backup on B (unwrapped inside B's TPM; not extractable there)" \
    "$bin" key import backup-me --in "$demo/backup-me.p8.kwp" --kek backup-kek
  step "B signs; openssl verifies with A's public key" \
    sh -c "'$bin' key sign backup-me --in '$demo/firmware.bin' --out '$demo/b.sig' && openssl dgst -sha256 -verify '$demo/backup-me.pub.pem' -signature '$demo/b.sig' '$demo/firmware.bin'"
  printf '\n\033[1m== A changed backup imports nothing (exit 14)\033[0m\n'
  cp "$demo/backup-me.p8.kwp" "$demo/changed.kwp"; printf 'x' | dd of="$demo/changed.kwp" bs=1 seek=100 conv=notrunc 2>/dev/null
  expect 14 "$bin" key import other --in "$demo/changed.kwp" --kek backup-kek

  printf '\n\033[1m== Module to module: TPM A sends a key to TPM B, only to a genuine TPM, only where the officer approved\033[0m\n'
  step "B publishes its peer identity: EK certificates and its transfer key" \
    "$bin" peer identity --out "$demo/b.peer.json"
  pk_b=$("$bin" status -o json | grep -o '"pk_name": "[0-9a-f]*"' | grep -o '[0-9a-f]\{20,\}')
  step "The officer challenges B (offline): a credential to B's EK for its transfer key's name" \
    "$bin" peer challenge --to "$demo/b.peer.json" --ek-ca "$demo/ek-ca-b.pem" --out "$demo/b.challenge.json"
  step "B proves its transfer key lives in its TPM: only B's TPM, with that key loaded by B's provd, opens it" \
    "$bin" peer prove --challenge "$demo/b.challenge.json" --out "$demo/b.proof.json"
  step "The officer approves moving key 'mover' to B's transfer key (offline): proven resident, bound to the PK enrolled for B" \
    "$bin" key approve --officer "$demo/officer.key.pem" --pk-policy "$pkpolicy" --dup-to "$demo/b.peer.json" --peer-pk "$pk_b" --challenge "$demo/b.challenge.json" --proof "$demo/b.proof.json" --object-name "$mover" --out "$demo/mover.dup-b.json"
  printf '\n\033[1m== Against the wrong manufacturer roots, B is not a proven TPM: nothing is wrapped (exit 15)\033[0m\n'
  expect 15 env PROVD_STATE_DIR="$demo/state" "$bin" dup export mover --to "$demo/b.peer.json" --approval "$demo/mover.dup-b.json" --ek-ca "$demo/ek-ca.pem" --out "$demo/mover.dup"
  step "A duplicates it: TPM2_Duplicate to B's transfer key, the inner key a credential to B's EK" \
    env PROVD_STATE_DIR="$demo/state" "$bin" dup export mover --to "$demo/b.peer.json" --approval "$demo/mover.dup-b.json" --ek-ca "$demo/ek-ca-b.pem" --out "$demo/mover.dup"
  step "B imports it (only B's TPM can activate the credential) and signs; openssl verifies with A's public key" \
    sh -c "'$bin' dup import mover --in '$demo/mover.dup' >/dev/null && '$bin' key sign mover --in '$demo/firmware.bin' --out '$demo/m.sig' && openssl dgst -sha256 -verify '$demo/mover.pub.pem' -signature '$demo/m.sig' '$demo/firmware.bin'"
  step "B's keys" \
    "$bin" key list
)
printf '\n\033[1m== A movable PK: it moves, with everything under it, to a backup TPM, where the same labels derive the same keys\033[0m\n'
name_of() { grep -o "\"$1\": \"[0-9a-f]*\"" | head -1 | grep -o '[0-9a-f]\{20,\}'; }
fleet() { # fleet CA-FILE [provision flags]: provision for the fleet, install a signed policy
  "$bin" provision --policy-signer "$demo/signer.pub.pem" --officer-key "$demo/officer.pub.pem" --ek-ca "$@"
  local c; c=$("$bin" policy show -o json | json_num policy_counter)
  "$bin" tpm pcr read --pcrs 7,15 -o json > "$PROVD_STATE_DIR.pcrs.json"
  "$bin" policy sign --signer "$demo/signer.key.pem" --pcr-values "$PROVD_STATE_DIR.pcrs.json" --version "$c" --out "$PROVD_STATE_DIR.policy.json" >/dev/null
  "$bin" policy install "$PROVD_STATE_DIR.policy.json" >/dev/null
}
(
  export PROVD_STATE_DIR="$demo/state-c" # the backup TPM
  "$bin" tpm info >/dev/null
  cat "$demo/state-c/swtpm/ca/swtpm-localca-rootca-cert.pem" "$demo/state-c/swtpm/ca/issuercert.pem" > "$demo/ek-ca-c.pem"
  fleet "$demo/ek-ca-c.pem" >/dev/null
  step "Backup TPM C, provisioned for the fleet, publishes its peer identity" \
    "$bin" peer identity --out "$demo/c.peer.json"
  "$bin" peer challenge --to "$demo/c.peer.json" --ek-ca "$demo/ek-ca-c.pem" --out "$demo/c.challenge.json" >/dev/null
  step "C answers the officer's challenge: its transfer key lives in its TPM" \
    "$bin" peer prove --challenge "$demo/c.challenge.json" --out "$demo/c.proof.json"
)
pk_c=$(PROVD_STATE_DIR="$demo/state-c" "$bin" status -o json | name_of pk_name)
(
  export PROVD_STATE_DIR="$demo/state-d" # a device whose PK can move
  "$bin" tpm info >/dev/null
  cat "$demo/state-d/swtpm/ca/swtpm-localca-rootca-cert.pem" "$demo/state-d/swtpm/ca/issuercert.pem" "$demo/ek-ca-c.pem" > "$demo/ek-ca-dc.pem"
  step "Device D's PK is born movable: its own policy binds it to C's transfer key, and nowhere else (C's EK verified)" \
    fleet "$demo/ek-ca-dc.pem" --duplicable-to "$demo/c.peer.json" --peer-pk "$pk_c" --challenge "$demo/c.challenge.json" --proof "$demo/c.proof.json"
  "$bin" key approve --officer "$demo/officer.key.pem" --pk-policy "$pkpolicy" --movable --type ecc-p256 --label telemetry --out "$demo/d-telemetry.approval.json" >/dev/null
  step "D derives a key from an approved recipe" \
    "$bin" key derive telemetry --type ecc-p256 --label telemetry --approval "$demo/d-telemetry.approval.json"
  "$bin" key pub telemetry --out "$demo/d-telemetry.pub.pem"
  step "D sends its PK to C: TPM2_Duplicate through the PK's own policy; D's state sealed under a key only C's TPM recovers" \
    "$bin" dup export --pk --to "$demo/c.peer.json" --peer-pk "$pk_c" --ek-ca "$demo/ek-ca-c.pem" --out "$demo/pk.dup"
)
pk_d=$(PROVD_STATE_DIR="$demo/state-d" "$bin" status -o json | name_of pk_name)
step "The officer approves C taking D's PK (offline)" \
  "$bin" key approve --officer "$demo/officer.key.pem" --pk-policy "$pkpolicy" --dup-to "$demo/c.peer.json" --peer-pk "$pk_c" --challenge "$demo/c.challenge.json" --proof "$demo/c.proof.json" --object-name "$pk_d" --out "$demo/pk.take-c.json"
(
  export PROVD_STATE_DIR="$demo/state-c"
  step "C adopts D's PK in place of its own (--force: what C sealed under its own PK is lost)" \
    "$bin" provision --from "$demo/pk.dup" --approval "$demo/pk.take-c.json" --force
  step "C signs with the key D derived; openssl verifies with D's public key" \
    sh -c "'$bin' key sign telemetry --in '$demo/firmware.bin' --out '$demo/c.sig' && openssl dgst -sha256 -verify '$demo/d-telemetry.pub.pem' -signature '$demo/c.sig' '$demo/firmware.bin'"
)
printf '\n\033[1m== Firmware: the vendor signs a manifest of the images, offline (no TPM, no state)\033[0m\n'
mkdir -p "$demo/images/efi"; printf 'bootloader' > "$demo/images/bootloader.bin"; head -c 65536 /dev/urandom > "$demo/images/efi/grubx64.efi"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$demo/fw-signer.key.pem" 2>/dev/null
step "Sign version 42 for device class 'gateway'" \
  "$bin" fw sign --key "$demo/fw-signer.key.pem" --images "$demo/images" --version 42 --class gateway --out "$demo/fw.manifest"
step "What it says, its signature checked" \
  "$bin" fw manifest show "$demo/fw.manifest"
payload=$(grep -o '"manifest": "[^"]*"' "$demo/fw.manifest" | sed 's/.*: "//; s/"$//')
older=$(printf '%s' "$payload" | base64 -d | sed 's/"version":42/"version":43/' | base64 -w0)
sed "s|$payload|$older|" "$demo/fw.manifest" > "$demo/fw-changed.manifest"
printf '\n\033[1m== The same manifest with its version raised after signing: the signature does not verify (exit 17)\033[0m\n'
expect 17 "$bin" fw manifest show "$demo/fw-changed.manifest"
printf '\n\033[1m== The boot hook on a new gateway: a device never provisioned authenticates its firmware at boot\033[0m\n'
openssl pkey -in "$demo/fw-signer.key.pem" -pubout -out "$demo/fw-signer.pub.pem"
(
  export PROVD_STATE_DIR="$demo/gw"
  "$bin" tpm info >/dev/null # the gateway's TPM, manufactured with its EK certificates
  cat "$demo/gw/swtpm/ca/swtpm-localca-rootca-cert.pem" "$demo/gw/swtpm/ca/issuercert.pem" > "$demo/ek-ca-gw.pem"
  export PROVD_EK_CA="$demo/ek-ca-gw.pem"
  step "The crypto officer anchors the firmware signer in the gateway's TPM (authenticated by its EK certificate): NV written only with the officer's signature over that one write" \
    "$bin" fw anchor set --pubkey "$demo/fw-signer.pub.pem" --class gateway --officer "$demo/officer.key.pem"
  step "Boot 1: power on, and provd-fw-verify.service runs fw verify (and commits version 42 as the lowest accepted)" \
    sh -c "'$bin' tpm reboot >/dev/null && '$bin' fw verify --manifest '$demo/fw.manifest' --root '$demo/images' --commit"
  step "The measurement log accounts for PCR 12" \
    "$bin" fw log --replay
  step "Provision the gateway with its PK sealed to PCR 12 as this good boot left it, and seal the disk key" \
    sh -c "'$bin' provision --pcrs 12 --ek-ca '$demo/ek-ca-gw.pem' >/dev/null && printf 'gateway-disk-key' | '$bin' seal --in - --out '$demo/gw-disk.sealed' && '$bin' unseal --in '$demo/gw-disk.sealed' --out -"
  echo
  cp "$demo/images/bootloader.bin" "$demo/bootloader.good"
  printf 'bootkit' > "$demo/images/bootloader.bin"
  printf '\n\033[1m== Boot 2: the bootloader image was changed; fw verify fails (exit 18) and measures "verification failed"\033[0m\n'
  "$bin" tpm reboot >/dev/null
  expect 18 "$bin" fw verify --manifest "$demo/fw.manifest" --root "$demo/images"
  step "The log says what PCR 12 holds" \
    "$bin" fw log --replay
  printf '\n\033[1m== The disk key stays locked after the bad boot (exit 3)\033[0m\n'
  expect 3 "$bin" unseal --in "$demo/gw-disk.sealed" --out -
  cp "$demo/bootloader.good" "$demo/images/bootloader.bin"
  step "Boot 3: the good image back; the firmware verifies and the disk key unseals" \
    sh -c "'$bin' tpm reboot >/dev/null && '$bin' fw verify --manifest '$demo/fw.manifest' --root '$demo/images' >/dev/null && '$bin' unseal --in '$demo/gw-disk.sealed' --out -"
  echo
  "$bin" fw sign --key "$demo/fw-signer.key.pem" --images "$demo/images" --version 41 --class gateway --out "$demo/fw-41.manifest" >/dev/null
  printf '\n\033[1m== Boot 4: an older release, properly signed, is refused: the counter accepts 42 and above (exit 20)\033[0m\n'
  "$bin" tpm reboot >/dev/null
  expect 20 "$bin" fw verify --manifest "$demo/fw-41.manifest" --root "$demo/images"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$demo/not-the-vendor.pem" 2>/dev/null
  "$bin" fw sign --key "$demo/not-the-vendor.pem" --images "$demo/images" --version 43 --class gateway --out "$demo/fw-other.manifest" >/dev/null
  printf '\n\033[1m== Boot 5: a manifest signed by a key the anchor does not name is refused (exit 17)\033[0m\n'
  "$bin" tpm reboot >/dev/null
  expect 17 "$bin" fw verify --manifest "$demo/fw-other.manifest" --root "$demo/images"

  printf '\n\033[1m== The fleet: an attestation endpoint on this machine (TLS 1.3, a self-signed certificate made on first start, SQLite)\033[0m\n'
  (
    export PROVD_STATE_DIR="$demo/endpoint" # the endpoint's host has a TPM and a provd of its own
    "$bin" tpm info >/dev/null
    cat "$demo/endpoint/swtpm/ca/swtpm-localca-rootca-cert.pem" "$demo/endpoint/swtpm/ca/issuercert.pem" > "$demo/ek-ca-endpoint.pem"
    "$bin" provision --ek-ca "$demo/ek-ca-endpoint.pem" >/dev/null
    step "The endpoint's host makes the fleet's duplication authority key in its TPM (never exportable)" \
      "$bin" key create fleet-authority --type ecc-p256
  )
  cat "$demo/ek-ca-gw.pem" "$demo/ek-ca-b.pem" > "$demo/ek-ca-fleet.pem"
  step "The device's binary links no endpoint (no SQLite, PostgreSQL or metrics): provd fleet serve runs provd-fleet, installed beside it" \
    sh -c "ls -lh '$bin' '$(dirname "$bin")/provd-fleet' | awk '{print \$5, \$NF}'"
  PROVD_STATE_DIR="$demo/endpoint" "$bin" fleet serve --listen 127.0.0.1:0 --ek-ca "$demo/ek-ca-fleet.pem" --authority-key fleet-authority 2> "$demo/endpoint.log" &
  endpoint_pid=$!
  trap 'kill $endpoint_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q serving "$demo/endpoint.log" 2>/dev/null && break; sleep 0.1; done
  url=$(grep -o 'https://[0-9.:]*' "$demo/endpoint.log" | head -1)
  echo "endpoint: $url (pid $endpoint_pid); devices pin $demo/endpoint/fleet/tls.crt"
  export PROVD_FLEET_CA="$demo/endpoint/fleet/tls.crt"
  step "Boot 6: good firmware again; the gateway enrolls: its EK certificate verified, a new attestation key proven to live with the EK" \
    sh -c "'$bin' tpm reboot >/dev/null && '$bin' fw verify --manifest '$demo/fw.manifest' --root '$demo/images' >/dev/null && '$bin' attest enroll --endpoint '$url' --class gateway"
  step "It attests: a quote over the endpoint's nonce, with the measurement log; the class has no golden values yet, so this quote becomes its baseline (trust on first use, said so)" \
    "$bin" attest now
  "$bin" tpm pcr read --pcrs 0,1,2,3,4,5,6,7,12 -o json > "$demo/gateway-golden.json"
  step "The operator sets the class's golden values from this known-good gateway (secrets go only to devices appraised against values an operator set, never a first-use baseline)" \
    "$bin" fleet policy set --class gateway --pcr-values "$demo/gateway-golden.json" --endpoint "$url" --token-file "$demo/endpoint/fleet/operator.token"
  printf 'wifi-passphrase-of-the-fleet' > "$demo/wifi.secret"
  step "The operator hands the endpoint a secret for the class (kept at the endpoint; listed by name only)" \
    "$bin" fleet secret put --class gateway --name wifi --in "$demo/wifi.secret" --endpoint "$url" --token-file "$demo/endpoint/fleet/operator.token"
  step "The gateway attests and fetches: the secret comes sealed to its TPM (a wrapper to its EK) and to the PCR values that passed" \
    "$bin" attest fetch
  step "It unseals it, inside the TPM" \
    "$bin" attest secret wifi
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$demo/fleet-ec.pem" 2>/dev/null
  openssl pkey -in "$demo/fleet-ec.pem" -pubout -out "$demo/fleet-ec.pub.pem"
  step "The operator hands the endpoint a signing key for the class; the gateway fetches it, wrapped to its EK, usable only to sign" \
    sh -c "'$bin' fleet key put --class gateway --name fleet-ec --in '$demo/fleet-ec.pem' --endpoint '$url' --token-file '$demo/endpoint/fleet/operator.token' >/dev/null && '$bin' attest fetch"
  step "The gateway signs with it inside its TPM; openssl verifies with the operator's public key" \
    sh -c "'$bin' attest sign fleet-ec --in '$demo/firmware.bin' --out '$demo/fleet-ec.sig' && openssl dgst -sha256 -verify '$demo/fleet-ec.pub.pem' -signature '$demo/fleet-ec.sig' '$demo/firmware.bin'"
  echo
  printf '\n\033[1m== The endpoint as the duplication authority: a key moves to TPM B only while B attests\033[0m\n'
  op="--endpoint $url --token-file $demo/endpoint/fleet/operator.token"
  (
    export PROVD_STATE_DIR="$demo/state-b"
    "$bin" attest enroll --endpoint "$url" --class edge >/dev/null
    "$bin" tpm pcr read --pcrs 0,1,2,3,4,5,6,7 -o json > "$demo/edge-golden.json"
    # shellcheck disable=SC2086
    "$bin" fleet policy set --class edge --pcr-values "$demo/edge-golden.json" --pk-policy "$pkpolicy" $op >/dev/null
    step "B (enrolled, class 'edge' with golden values) registers its transfer key: its peer file in the quote, then the endpoint's credential to B's enrolled EK, which only B's TPM opens" \
      "$bin" attest peer
  )
  id_b=$(name_of device_id < "$demo/state-b/attest.json")
  pk_b_fleet=$(PROVD_STATE_DIR="$demo/state-b" "$bin" status -o json | name_of pk_name)
  (
    export PROVD_STATE_DIR="$demo/state"
    "$bin" fleet authority --endpoint "$url" --out "$demo/fleet-authority.pem" >/dev/null
    step "A creates a key movable only where the fleet's authority approves" \
      "$bin" key create fleet-moved --type ecc-p256 --extractable --duplicable-by "$demo/fleet-authority.pem"
    "$bin" key pub fleet-moved --out "$demo/fleet-moved.pub.pem"
  )
  moved=$(PROVD_STATE_DIR="$demo/state" "$bin" key pub fleet-moved -o json | name_of object_name)
  # shellcheck disable=SC2086
  step "The operator asks the endpoint to approve it to B: signed in the endpoint's TPM because B's last attestation passed" \
    "$bin" fleet approve "$id_b" --object-name "$moved" --out "$demo/fleet-moved.approval.json" --peer-out "$demo/b.fleet-peer.json" $op
  step "A duplicates it to B with the endpoint's approval (A's TPM checks the authority's signature)" \
    env PROVD_STATE_DIR="$demo/state" "$bin" dup export fleet-moved --to "$demo/b.fleet-peer.json" --approval "$demo/fleet-moved.approval.json" --ek-ca "$demo/ek-ca-b.pem" --out "$demo/fleet-moved.dup"
  "$bin" key approve --officer "$demo/officer.key.pem" --pk-policy "$pkpolicy" --dup-to "$demo/b.fleet-peer.json" --peer-pk "$pk_b_fleet" --challenge "$demo/b.challenge.json" --proof "$demo/b.proof.json" --object-name "$moved" --out "$demo/fleet-moved.take-b.json" >/dev/null
  step "B imports it with its own officer's approval and signs; openssl verifies with A's public key" \
    env PROVD_STATE_DIR="$demo/state-b" sh -c "'$bin' dup import fleet-moved --in '$demo/fleet-moved.dup' --approval '$demo/fleet-moved.take-b.json' >/dev/null && '$bin' key sign fleet-moved --in '$demo/firmware.bin' --out '$demo/fm.sig' && openssl dgst -sha256 -verify '$demo/fleet-moved.pub.pem' -signature '$demo/fm.sig' '$demo/firmware.bin'"
  PROVD_STATE_DIR="$demo/state-b" "$bin" tpm pcr extend 7 --data "B's boot changed" >/dev/null
  PROVD_STATE_DIR="$demo/state-b" "$bin" attest now >/dev/null 2>&1 || true
  printf '\n\033[1m== B'"'"'s boot changed and its attestation failed: the endpoint approves nothing more to B (exit 5)\033[0m\n'
  # shellcheck disable=SC2086
  expect 5 "$bin" fleet approve "$id_b" --object-name "$moved" --out "$demo/x.json" --peer-out "$demo/x.peer.json" $op
  echo
  step "Something changes the boot (PCR 7)" \
    "$bin" tpm pcr extend 7 --data "Secure Boot turned off"
  printf '\n\033[1m== The next attestation fails, naming the PCR (exit 23), and the delivered secret stays sealed (exit 3)\033[0m\n'
  expect 23 "$bin" attest now
  expect 3 "$bin" attest secret wifi
  expect 3 "$bin" attest sign fleet-ec --in "$demo/firmware.bin"
  step "The operator (bearer token made on first start) sees the fleet and the device's history" \
    sh -c "'$bin' fleet devices --endpoint '$url' --token-file '$demo/endpoint/fleet/operator.token' && '$bin' fleet device show \$('$bin' fleet devices --endpoint '$url' --token-file '$demo/endpoint/fleet/operator.token' -o json | grep -o '\"device_id\": \"[0-9a-f]*\"' | head -1 | grep -o '[0-9a-f]\\{64\\}') --endpoint '$url' --token-file '$demo/endpoint/fleet/operator.token'"
  echo "operators' page: $url/ui/ (sign in with the token in $demo/endpoint/fleet/operator.token; metrics: $url/metrics)"
  printf '\n\033[1m== Without the operator token: refused\033[0m\n'
  printf '$ provd fleet devices --endpoint %s\n' "$url"; set +e; "$bin" fleet devices --endpoint "$url"; echo "(exit $?)"; set -e
  kill "$endpoint_pid"; wait "$endpoint_pid" 2>/dev/null || true; trap - EXIT
)
step "The boot chain changes again (PCR 15)" \
  "$bin" tpm pcr extend 15 --data "unsigned firmware"
printf '\n\033[1m== Every key use is checked against the PK policy again: exit 3\033[0m\n'
expect 3 "$bin" key sign tls --in "$demo/firmware.bin"

step "The audit trail: every lifecycle operation, hash-chained" \
  "$bin" audit show
step "...and anchored in a TPM NV extend index" \
  "$bin" audit verify
step "provd status" \
  "$bin" status
step "Zeroize: every TPM object and NV index provd made, and every blob, gone (--srk: the SRK too)" \
  "$bin" zeroize --yes --srk
step "The SRK stays gone: provd persists it again only when it provisions (below, through the daemon)" \
  sh -c "'$bin' tpm info | grep SRK"

# The daemon: one process holds the TPM and serves every client over a unix
# socket. Here it runs in the background on the sim TPM; under systemd it is
# provd.service with provd.socket (docs/systemd.md).
sock="$demo/provd.sock"
printf '\n\033[1m== provd serve: the daemon holds the TPM for every client (in the background)\033[0m\n'
printf '$ %s\n' "$bin -v --tpm sim serve --socket $sock --socket-group \"\" &"
"$bin" -v --tpm sim serve --socket "$sock" --socket-group "" 2> "$demo/serve.log" &
serve_pid=$!
trap 'kill -TERM "$serve_pid" 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$demo/serve.log" >&2; echo "demo: the daemon did not start" >&2; exit 1; }
# No TPM named: the CLI finds the daemon by its socket.
unset PROVD_TPM
export PROVD_SOCKET="$sock"
step "The CLI uses the daemon when its socket answers and no --tpm is given" \
  "$bin" status
step "Provision again, through the daemon (the caller's role comes from its uid); the SRK is persisted again" \
  sh -c "'$bin' provision --pcrs 7 && '$bin' tpm info | grep SRK"
step "Seal and unseal through the daemon" \
  sh -c "printf 'via-the-daemon' | '$bin' seal --in - --out '$demo/daemon.sealed' && '$bin' unseal --in '$demo/daemon.sealed' --out -; echo"
step "An RSA key for decryption, made in the TPM" \
  "$bin" key create fw --type rsa-2048 --usage decrypt
head -c 100000 /dev/urandom > "$demo/big.bin"
step "Hostile input: a 100,000-byte ciphertext is refused before anything reaches the TPM (exit 2), and the daemon serves on" \
  sh -c "'$bin' key decrypt fw --in '$demo/big.bin' --out '$demo/big.out'; echo \"exit \$?\"; '$bin' key list"
step "For scripts: under -o json an error is JSON on stderr, with its kind and exit code (provd man: provd-exit-codes(7))" \
  sh -c "'$bin' -o json key pub nosuch; echo \"exit \$?\""
step "Warm signs through the daemon: the key stays loaded and one salted policy session is kept, so each sign is 3 TPM commands (PolicyPCR, PolicyAuthValue, Sign: the per-request log lines below)" \
  sh -c "'$bin' key create hot --type ecc-p256 >/dev/null && for i in 1 2 3 4; do '$bin' key sign hot --digest $(printf '%064x' 1) --hash sha256 --out '$demo/hot.sig' || exit 1; done"
step "The audit trail records the daemon's callers by uid" \
  sh -c "'$bin' audit show | tail -3"
step "Stop it: SIGTERM drains the requests, flushes handles and sends TPM2_Shutdown(STATE)" \
  kill -TERM "$serve_pid"
wait "$serve_pid"
trap - EXIT
sed -n 's/^time=[^ ]* //p' "$demo/serve.log" | grep -v 'level=DEBUG msg=request' || true
printf '\nThe warm signs, as the daemon logged them (-v):\n'
grep 'operation=key-sign' "$demo/serve.log" | sed -n 's/.*\(operation=key-sign\).*\(duration=[^ ]*\) \(tpm_commands=[0-9]*\).*/  \1 \2 \3/p'
unset PROVD_SOCKET
printf '\nDemo state is in %s (rm -rf it when done).\n' "$demo"
