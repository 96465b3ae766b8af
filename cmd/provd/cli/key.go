package cli

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent/tpmkey"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/pemblock"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
)

func (a *app) keyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "Operational keys inside the TPM: derive, create, sign, HMAC, ECDH, decrypt, CSR, key files",
		Long: `Operational keys live under the provisioning key and never leave the TPM.

  derived keys   provd key derive: the same label and context give the same key
                 on every boot (ecc-p256, ecc-p384, hmac-sha256, aes-256);
                 nothing secret is stored
  created keys   provd key create: random keys generated in the TPM and stored
                 TPM-wrapped (rsa-2048/3072/4096, ecc-p256, ecc-p384), optionally
                 --extractable, decided at creation and never later

Every use checks the provisioning key's policy again inside the TPM: when the PCRs
no longer satisfy it, every key use fails with exit code 3. Only approved
algorithms are accepted (exit code 5 otherwise). See docs/keys.md.`,
	}
	c.AddCommand(a.keyDeriveCmd(), a.keyApproveCmd(), a.keyCreateCmd(), a.keySignCmd(), a.keyHMACCmd(), a.keyECDHCmd(),
		a.keyEncryptCmd(), a.keyDecryptCmd(), a.keyPubCmd(), a.keyListCmd(), a.keyDeleteCmd(), a.keyCSRCmd(),
		a.keyExportBlobCmd(), a.keyImportBlobCmd(), a.keyExportCmd(), a.keyImportCmd(), a.keyRecoverCmd())
	return c
}

func printKey(w io.Writer, k api.KeyInfo) {
	// A record's fields: a state edited (A4, A6) or brought by a moved PK
	// may hold anything; none draws a line or a column (review 55).
	p := printable
	fmt.Fprintf(w, "key:         %s\nkind:        %s\ntype:        %s\nusage:       %s\n", p(k.Name), p(k.Kind), p(k.Type), p(k.Usage))
	if k.Kind == api.KindDerived {
		fmt.Fprintf(w, "label:       %s\ncontext:     %s\n", p(k.Label), p(k.Context))
	}
	fmt.Fprintf(w, "extractable: %v\nTPM name:    %s\n", k.Extractable, p(k.ObjectName))
}

func (a *app) keyDeriveCmd() *cobra.Command {
	var req api.DeriveRequest
	var approvalFile string
	c := &cobra.Command{
		Use:   "derive NAME --label L [--context C] --type TYPE [--usage USAGE] --approval FILE",
		Short: "Derive a key inside the TPM from the derivation parent (same recipe, same key)",
		Long: `Derive a key inside the TPM from the derivation parent under the PK with
TPM2_CreateLoaded. Types: ecc-p256, ecc-p384 (usage sign or ecdh), hmac-sha256
(hmac), aes-256 (decrypt: key encrypt/decrypt). RSA keys cannot be derived by a
TPM: use provd key create.

The recipe is the type, usage, label (1-32 bytes) and context (0-32 bytes,
printable text): the same recipe gives the same key on every boot, and on a peer
that received the PK; a signing key and an ECDH key with one label are
different keys. The TPM derives only recipes the crypto officer approved
(--approval, made offline with provd key approve for the PK policy digest that
provd status shows): whoever satisfies the PK's policy still cannot derive the
key's secret in another form and read it (docs/key-hierarchy.md).`,
		Example: `  provd key approve --officer officer.key.pem --pk-policy $(provd status -o json | jq -r .policy_digest) \
      --type ecc-p256 --label tls --context device-42 --out tls.approval.json
  provd key derive tls --label tls --context device-42 --type ecc-p256 --approval tls.approval.json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if req.Label == "" || req.Type == "" {
				return usageError(fmt.Errorf("--label and --type are required"))
			}
			if approvalFile != "" {
				b, err := os.ReadFile(approvalFile)
				if err != nil {
					return usageError(err)
				}
				req.Approval = new(policy.Approval)
				if err := req.Approval.UnmarshalJSON(b); err != nil {
					return fmt.Errorf("%s: %w", approvalFile, err)
				}
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				k, err := ag.DeriveKey(cmd.Context(), req)
				if errors.Is(err, catalog.ErrNotDerivable) {
					return fmt.Errorf("%w; for a TPM-generated key: provd key create %s --type %s", err, req.Name, req.Type)
				}
				if err != nil {
					return err
				}
				return a.emit(k, func(w io.Writer) { printKey(w, k) })
			})
		},
	}
	c.Flags().StringVar(&req.Label, "label", "", "derivation label (1-32 bytes)")
	c.Flags().StringVar(&req.Context, "context", "", "derivation context (0-32 bytes)")
	c.Flags().StringVar(&req.Type, "type", "", "ecc-p256, ecc-p384, hmac-sha256 or aes-256")
	c.Flags().StringVar(&req.Usage, "usage", "", "sign, ecdh, decrypt or hmac (default: the type's first)")
	c.Flags().StringVar(&approvalFile, "approval", "", "the crypto officer's approval of this recipe (provd key approve)")
	return c
}

func (a *app) keyApproveCmd() *cobra.Command {
	var r officer.Recipe
	var officerFile, pkPolicy, out, objectName, kekName, dupTo, peerPK, challenge, proof string
	var export bool
	c := &cobra.Command{
		Use:   "approve --officer KEY.pem --pk-policy DIGEST (--type TYPE [--usage U] --label L [--context C] | --export --object-name NAME --kek-object-name KEK | --dup-to PEER.json --peer-pk PK --challenge C --proof P --object-name NAME) [--movable] --out FILE",
		Short: "Approve a derivation recipe, or a key's export or duplication to a peer, as the crypto officer (offline, no TPM)",
		Long: `Sign, offline, the crypto officer's approval of one derivation recipe for devices
whose PK policy digest is --pk-policy (provd status shows it; devices provisioned
with one policy signer, or one set of golden PCR values, share it). The approval
covers exactly the key's TPM template: its type, usage, attributes and policy,
and the label and context. provd key derive --approval FILE then derives that
key, and the TPM refuses any other template under the derivation parent.

With --export, the approval is of one extractable key's export as a backup
(provd key export) under one KEK: --object-name is the key's TPM name (provd key
pub NAME -o json, .object_name), which covers its public key, attributes and
policy; --kek-object-name is the KEK's TPM name, which provd kek import printed
at the ceremony (and provd key list shows), and which covers the custodians' key.
The TPM checks the first in the key's duplication branch and exports nothing
else; provd checks the second and wraps the backup under no other KEK (the TPM
hands the key to provd for the wrap, so no TPM policy can say under what). Take
the KEK's name from the ceremony's record: a key list reads the device's state.
With --dup-to PEER.json instead, the approval is of the key's duplication to that
peer's transfer key (provd dup export): the TPM duplicates it to no other.
--peer-pk is the PK name enrolled for that device (provd status on it, when it
was provisioned): the peer file's transfer key must be bound to it, which is
what says the key is that device's provd's and not a look-alike. --challenge
(yours, from provd peer challenge) and --proof (the peer's answer, provd peer
prove) show that the transfer key lives in the peer's TPM: a peer file alone
could carry a software key of someone else's, and whoever runs the sender's TPM
could then duplicate the key to it with an inner key of their choice. The same
approval of the PK's name (--object-name from provd status) lets a device adopt
a moved PK (provd provision --from).

The officer key is the private half of provision --officer-key: ECDSA P-256,
P-384, or RSA >= 3072 (RSA-PSS), PEM, unencrypted. Keep it off the device.`,
		Example: `  provd key approve --officer officer.key.pem --pk-policy 5f1c…e2 --type hmac-sha256 --label telemetry --out mac.approval.json
  provd key approve --officer officer.key.pem --pk-policy 5f1c…e2 --export --object-name 000b4c…9a \
      --kek-object-name 000b91…07 --out signer.export.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if officerFile == "" || pkPolicy == "" || out == "" {
				return usageError(errors.New("--officer, --pk-policy and --out are required"))
			}
			move := export || dupTo != ""
			if export && dupTo != "" || move != (objectName != "") || move == (r.Type != "" || r.Label != "") {
				return usageError(errors.New("approve one of: a recipe (--type and --label), an export (--export --object-name), a duplication (--dup-to --object-name)"))
			}
			if !move && (r.Type == "" || r.Label == "") {
				return usageError(errors.New("a recipe's approval needs --type and --label"))
			}
			if move && r.Movable {
				return usageError(errors.New("--movable goes with a recipe"))
			}
			if export != (kekName != "") {
				return usageError(errors.New("--kek-object-name goes with --export, which needs it: the officer approves an export under one KEK"))
			}
			digest, err := hex.DecodeString(pkPolicy)
			if err != nil {
				return usageError(fmt.Errorf("--pk-policy: %w", err))
			}
			key, err := readSigner(officerFile)
			if err != nil {
				return err
			}
			var ap *policy.Approval
			var file json.Marshaler
			switch {
			case export:
				name, err1 := tpmNameFlag("--object-name", objectName)
				kek, err2 := tpmNameFlag("--kek-object-name", kekName)
				if err := errors.Join(err1, err2); err != nil {
					return err
				}
				dup, kekPart, err := officer.ApproveExport(key, digest, name, kek)
				if err != nil {
					return err
				}
				ap, file = dup, &api.ExportApproval{Duplication: dup, KEK: kekPart}
			case move:
				name, err := tpmNameFlag("--object-name", objectName)
				if err != nil {
					return err
				}
				_, parent, _, err := readProvenPeer(a, dupTo, peerPK, challenge, proof)
				if err != nil {
					return err
				}
				if ap, err = officer.ApproveDuplication(key, digest, name, parent); err != nil {
					return err
				}
				file = ap
			default:
				if ap, err = officer.ApproveDerive(key, digest, r); err != nil {
					return err
				}
				file = ap
			}
			b, err := file.MarshalJSON()
			if err != nil {
				return err
			}
			if err := writeOut(a, out, b, 0o644, store.Durable); err != nil {
				return err
			}
			res := struct {
				Out            string `json:"out"`
				ApprovedPolicy string `json:"approved_policy"`
			}{out, hex.EncodeToString(ap.ApprovedPolicy)}
			return a.emit(res, func(w io.Writer) {
				switch {
				case out == "-":
				case export:
					fmt.Fprintf(w, "approved the export of key %s under KEK %s: %s\n", objectName, kekName, out)
				case move:
					fmt.Fprintf(w, "approved the duplication of key %s to the peer of %s: %s\n", objectName, dupTo, out)
				default:
					fmt.Fprintf(w, "approved %s recipe label %q context %q: %s\n", r.Type, r.Label, r.Context, out)
				}
			})
		},
	}
	c.Flags().StringVar(&officerFile, "officer", "", "the crypto officer's private key (PEM)")
	c.Flags().StringVar(&pkPolicy, "pk-policy", "", "the devices' PK policy digest, hex (provd status)")
	c.Flags().StringVar(&r.Type, "type", "", "ecc-p256, ecc-p384, hmac-sha256 or aes-256")
	c.Flags().StringVar(&r.Usage, "usage", "", "sign, ecdh, decrypt or hmac (default: the type's first)")
	c.Flags().StringVar(&r.Label, "label", "", "derivation label (1-32 bytes)")
	c.Flags().StringVar(&r.Context, "context", "", "derivation context (0-32 bytes)")
	c.Flags().BoolVar(&r.Movable, "movable", false, "the recipe is for devices whose PK is movable (provd status says; their derived keys' template differs, the keys do not)")
	c.Flags().StringVar(&out, "out", "", "where to write the approval (- for stdout)")
	c.Flags().BoolVar(&export, "export", false, "approve a key's export as a backup (provd key export) instead of a recipe")
	c.Flags().StringVar(&objectName, "object-name", "", "with --export or --dup-to: the key's TPM name, hex")
	c.Flags().StringVar(&kekName, "kek-object-name", "", "with --export: the TPM name of the KEK the backup goes under, hex (provd kek import printed it)")
	c.Flags().StringVar(&dupTo, "dup-to", "", "approve a key's duplication to this peer (provd peer identity output) instead of a recipe")
	c.Flags().StringVar(&peerPK, "peer-pk", "", "with --dup-to: the PK name enrolled for the peer device, hex")
	c.Flags().StringVar(&challenge, "challenge", "", "with --dup-to: your challenge to the peer (provd peer challenge)")
	c.Flags().StringVar(&proof, "proof", "", "with --dup-to: the peer's answer (provd peer prove)")
	return c
}

func (a *app) keyCreateCmd() *cobra.Command {
	var req api.CreateRequest
	var dupTo, dupBy, ekCA, peerPK, challenge, proof string
	c := &cobra.Command{
		Use:   "create NAME --type TYPE [--usage sign|decrypt] [--extractable | --duplicable-to PEER.json --peer-pk PK --challenge C --proof P --ek-ca BUNDLE | --duplicable-by AUTHORITY.pub]",
		Short: "Generate a random key inside the TPM under the PK, stored TPM-wrapped",
		Long: `Generate a key inside the TPM under the provisioning key. Types: rsa-2048,
rsa-3072, rsa-4096 (usage sign or decrypt: RSA-OAEP), ecc-p256, ecc-p384 (usage
sign, or decrypt meaning ECDH). Without --extractable the key is fixedTPM and
fixedParent and its policy has no duplication branch: it can never leave this TPM.
--extractable is decided now and can never be turned on later: such a key leaves
only where the crypto officer approves, one key and one destination at a time (a
peer TPM, provd dup export; or a backup, provd key export).

Two other rules, also for life, for keys that go to peer TPMs only and are never
backed up (encryptedDuplication: the TPM refuses a duplicate without an inner
wrapper or a real parent):
  --duplicable-to PEER.json   bound to one peer's transfer key (provd peer
                              identity; its EK certificate must chain to --ek-ca,
                              and it must be bound to the PK enrolled for that
                              device, --peer-pk, and proven resident in its
                              TPM, --challenge and --proof: provd peer
                              challenge, provd peer prove): it goes there
                              with no approval, and nowhere else
  --duplicable-by AUTH.pub    approvals by this authority, not the officer, send
                              it to peers (provd key approve --officer AUTH.key
                              --dup-to ...), for example a fleet service that
                              approves a peer after it attests`,
		Example: `  provd key create fw-sign --type rsa-3072
  provd key create transport --type rsa-2048 --usage decrypt`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if req.Type == "" {
				return usageError(fmt.Errorf("--type is required"))
			}
			r, err := readBirthRule(a, dupTo, dupBy, peerPK, challenge, proof)
			if err != nil {
				return err
			}
			req.DuplicableTo, req.PeerPK, req.Residency, req.DuplicableBy = r.to, peerPK, r.proven, r.by
			if dupTo != "" && ekCA != "" {
				if req.EKCA, err = readIn(a, ekCA); err != nil {
					return err
				}
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				k, err := ag.CreateKey(cmd.Context(), req)
				if errors.Is(err, catalog.ErrNotCreatable) {
					return fmt.Errorf("%w; derive it instead: provd key derive %s --label L --type %s", err, req.Name, req.Type)
				}
				if err != nil {
					return err
				}
				return a.emit(k, func(w io.Writer) { printKey(w, k) })
			})
		},
	}
	c.Flags().StringVar(&req.Type, "type", "", "rsa-2048, rsa-3072, rsa-4096, ecc-p256 or ecc-p384")
	c.Flags().StringVar(&req.Usage, "usage", "", "sign or decrypt (default sign)")
	c.Flags().BoolVar(&req.Extractable, "extractable", false, "let it leave with the crypto officer's approval of each destination (decided now, forever)")
	c.Flags().StringVar(&dupTo, "duplicable-to", "", "bind it to this peer's transfer key (provd peer identity output): peers only, no backup")
	c.Flags().StringVar(&ekCA, "ek-ca", "", "with --duplicable-to: the manufacturer certificates the peer's EK must chain to (default: the daemon's ek_ca)")
	c.Flags().StringVar(&dupBy, "duplicable-by", "", "let this authority's approvals (PEM public key) send it to peers: peers only, no backup")
	c.Flags().StringVar(&peerPK, "peer-pk", "", "with --duplicable-to: the PK name enrolled for the peer device, hex")
	c.Flags().StringVar(&challenge, "challenge", "", "with --duplicable-to: your challenge to the peer (provd peer challenge)")
	c.Flags().StringVar(&proof, "proof", "", "with --duplicable-to: the peer's answer (provd peer prove)")
	return c
}

func (a *app) keySignCmd() *cobra.Command {
	var in, digestHex, out, scheme, hashName string
	c := &cobra.Command{
		Use:   "sign NAME (--in FILE | --digest HEX) [--out FILE] [--scheme ecdsa|rsassa|rsapss] [--hash sha256|sha384]",
		Short: "Sign a file or a digest inside the TPM",
		Long: `Sign FILE (hashed here with --hash) or a ready digest. ECDSA signatures are
ASN.1 DER, RSA signatures the raw octets: both are what openssl dgst -verify and
openssl pkeyutl -verify take. The default hash is sha384 for ecc-p384 keys and
sha256 otherwise. Without --out the signature is printed in hex.`,
		Example: `  provd key sign tls --in firmware.bin --out firmware.sig
  openssl dgst -sha256 -verify tls.pub.pem -signature firmware.sig firmware.bin`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (in == "") == (digestHex == "") {
				return usageError(fmt.Errorf("give exactly one of --in and --digest"))
			}
			h, err := api.ParseHash(hashName)
			if err != nil {
				return err
			}
			switch scheme {
			case "", api.SchemeECDSA, api.SchemeRSASSA, api.SchemeRSAPSS:
			default:
				return fmt.Errorf("%w: scheme %q (approved: ecdsa, rsassa, rsapss)", api.ErrNotPermitted, scheme)
			}
			var data []byte
			if in != "" {
				if data, err = readIn(a, in); err != nil {
					return err
				}
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				if h == 0 { // the key's default hash
					_, info, err := ag.KeyPublic(cmd.Context(), args[0])
					if err != nil {
						return err
					}
					h = info.DefaultHash()
				}
				var digest []byte
				if in != "" {
					hh := h.New()
					hh.Write(data)
					digest = hh.Sum(nil)
				} else if digest, err = hex.DecodeString(digestHex); err != nil {
					return usageError(fmt.Errorf("--digest: %w", err))
				}
				sig, err := ag.Sign(cmd.Context(), args[0], digest, api.SignOptions{Scheme: scheme, Hash: h})
				if err != nil {
					return err
				}
				if out != "" {
					if err := writeOut(a, out, sig, 0o644, store.Remakeable); err != nil {
						return err
					}
					if out == "-" {
						return nil
					}
				}
				res := map[string]any{"key": args[0], "hash": strings.ToLower(strings.ReplaceAll(h.String(), "-", "")), "signature_hex": hex.EncodeToString(sig)}
				if out != "" {
					res["out"], res["bytes"] = out, len(sig)
				}
				return a.emit(res, func(w io.Writer) {
					if out != "" {
						fmt.Fprintf(w, "signature (%d bytes) written to %s\n", len(sig), out)
					} else {
						fmt.Fprintln(w, hex.EncodeToString(sig))
					}
				})
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "file to sign (- for stdin)")
	c.Flags().StringVar(&digestHex, "digest", "", "digest to sign, in hex")
	c.Flags().StringVar(&out, "out", "", "write the signature here (- for stdout, raw)")
	c.Flags().StringVar(&scheme, "scheme", "", "ecdsa (ECC), rsassa or rsapss (RSA)")
	c.Flags().StringVar(&hashName, "hash", "", "sha256 or sha384")
	return c
}

// secretOut writes a secret to --out (mode 0600) or prints it in hex.
func (a *app) secretOut(out, field string, b []byte) error {
	if out != "" {
		return a.outputTo(out, b, 0o600, nil)
	}
	return a.emit(map[string]string{field: hex.EncodeToString(b)}, func(w io.Writer) {
		fmt.Fprintln(w, hex.EncodeToString(b))
	})
}

func (a *app) keyHMACCmd() *cobra.Command {
	var in, out string
	c := &cobra.Command{
		Use:   "hmac NAME --in FILE [--out FILE]",
		Short: "HMAC-SHA-256 of a file with an hmac-sha256 key, inside the TPM",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return usageError(fmt.Errorf("--in is required"))
			}
			data, err := readIn(a, in)
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				mac, err := ag.HMAC(cmd.Context(), args[0], data)
				if err != nil {
					return err
				}
				return a.secretOut(out, "hmac_hex", mac)
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "data (FILE, or - for stdin)")
	c.Flags().StringVar(&out, "out", "", "write the raw HMAC here (default: hex on stdout)")
	return c
}

func (a *app) keyECDHCmd() *cobra.Command {
	var peerFile, out string
	c := &cobra.Command{
		Use:   "ecdh NAME --peer-pub PEM [--out FILE]",
		Short: "ECDH shared secret of an ecdh key and a peer's public key (TPM2_ECDH_ZGen)",
		Long: `Compute the ECDH shared secret (the X coordinate, as openssl pkeyutl -derive
gives it) of the key and the peer's public key (PEM SubjectPublicKeyInfo on the
key's curve). The secret is written to --out (mode 0600) or printed in hex.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if peerFile == "" {
				return usageError(fmt.Errorf("--peer-pub is required"))
			}
			b, err := os.ReadFile(peerFile)
			if err != nil {
				return usageError(err)
			}
			peer, err := parsePeer(b)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", api.ErrBadInput, peerFile, err)
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				z, err := ag.ECDH(cmd.Context(), args[0], peer)
				if err != nil {
					return err
				}
				defer clear(z)
				return a.secretOut(out, "shared_secret_hex", z)
			})
		},
	}
	c.Flags().StringVar(&peerFile, "peer-pub", "", "the peer's public key (PEM)")
	c.Flags().StringVar(&out, "out", "", "write the raw secret here (mode 0600)")
	return c
}

func parsePeer(b []byte) (*ecdh.PublicKey, error) {
	blk, err := pemblock.Decode(b, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return k.ECDH()
	case *ecdh.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("not an EC public key")
}

func (a *app) keyEncryptCmd() *cobra.Command {
	var in, out string
	c := &cobra.Command{
		Use:   "encrypt NAME --in FILE --out FILE",
		Short: "Encrypt a file with an aes-256 key (AES-256-GCM, data key wrapped by the TPM key)",
		Long: `Encrypt FILE into an AES envelope: AES-256-GCM on the host under a fresh data
key, the data key encrypted by the TPM's AES-256 key (TPM2_EncryptDecrypt2, CFB).
One TPM use per file, any size up to 64 MiB. Format: docs/formats.md.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" || out == "" {
				return usageError(fmt.Errorf("--in and --out are required"))
			}
			data, err := readIn(a, in)
			if err != nil {
				return err
			}
			defer clear(data)
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				env, err := ag.EncryptData(cmd.Context(), args[0], data)
				if err != nil {
					return err
				}
				return a.outputTo(out, env, 0o644, map[string]any{"key": args[0]})
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "plaintext (FILE, or - for stdin)")
	c.Flags().StringVar(&out, "out", "", "envelope (FILE, or - for stdout)")
	return c
}

func (a *app) keyDecryptCmd() *cobra.Command {
	var in, out, hashName string
	c := &cobra.Command{
		Use:   "decrypt NAME --in FILE [--out FILE] [--hash sha256|sha384]",
		Short: "Decrypt with an RSA decrypt key (RSA-OAEP) or an aes-256 key (envelope)",
		Long: `With an RSA decrypt key: decrypt an RSA-OAEP ciphertext (--hash, default
sha256, for both OAEP and MGF1; no label), as openssl pkeyutl -encrypt -pkeyopt
rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 makes it. With an aes-256 key:
open an envelope made by provd key encrypt. The plaintext goes to --out (mode
0600) or stdout.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return usageError(fmt.Errorf("--in is required"))
			}
			h, err := api.ParseHash(hashName)
			if err != nil {
				return err
			}
			data, err := readIn(a, in)
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				// Symmetric keys have no public key: KeyPublic fails for
				// them, and DecryptData checks the key type itself.
				_, info, err := ag.KeyPublic(cmd.Context(), args[0])
				if errors.Is(err, api.ErrNotFound) {
					return err
				}
				var plain []byte
				if err == nil && strings.HasPrefix(info.Type, "rsa-") {
					plain, err = ag.Decrypt(cmd.Context(), args[0], data, h)
				} else {
					plain, err = ag.DecryptData(cmd.Context(), args[0], data)
				}
				if err != nil {
					return err
				}
				defer clear(plain)
				if out == "" {
					out = "-"
				}
				if out == "-" && a.output == "json" {
					return a.emit(map[string]string{"key": args[0], "plaintext_hex": hex.EncodeToString(plain)}, nil)
				}
				return a.outputTo(out, plain, 0o600, map[string]any{"key": args[0]})
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "ciphertext or envelope (FILE, or - for stdin)")
	c.Flags().StringVar(&out, "out", "", "plaintext (FILE, mode 0600; default stdout)")
	c.Flags().StringVar(&hashName, "hash", "", "OAEP hash: sha256 (default) or sha384")
	return c
}

func (a *app) keyPubCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "pub NAME [--out FILE]",
		Short: "The key's public key (PEM SubjectPublicKeyInfo)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				pub, info, err := ag.KeyPublic(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				der, err := x509.MarshalPKIXPublicKey(pub)
				if err != nil {
					return err
				}
				p := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
				if out != "" && out != "-" {
					return a.outputTo(out, p, 0o644, map[string]any{"key": args[0], "object_name": info.ObjectName})
				}
				return a.emit(map[string]string{"key": args[0], "object_name": info.ObjectName, "public_pem": string(p)}, func(w io.Writer) { w.Write(p) })
			})
		},
	}
	c.Flags().StringVar(&out, "out", "", "write the PEM here")
	return c
}

func (a *app) keyListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the keys",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				keys, err := ag.ListKeys(cmd.Context())
				if err != nil {
					return err
				}
				return a.emit(keys, func(w io.Writer) {
					tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tKIND\tTYPE\tUSAGE\tEXTRACTABLE\tLABEL/CONTEXT")
					exposed := 0
					for _, k := range keys {
						lc := ""
						if k.Kind == api.KindDerived {
							lc = k.Label + "/" + k.Context
						}
						p := printable // a record's fields draw no row or column (review 55)
						name := p(k.Name)
						if k.SignerCanMove {
							name += " (!)"
							exposed++
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", name, p(k.Kind), p(k.Type), p(k.Usage), k.Extractable, p(lc))
					}
					tw.Flush()
					if exposed > 0 {
						fmt.Fprintf(w, "(!) %d key(s) made before provd bound a movable key's use to its command: the PK's policy signer can move them; replace them (docs/keys.md)\n", exposed)
					}
				})
			})
		},
	}
}

func (a *app) keyDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a key (a created key is gone for good unless its blob was exported)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				if err := ag.DeleteKey(cmd.Context(), args[0]); err != nil {
					return err
				}
				return a.emit(map[string]string{"deleted": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "deleted key %s\n", args[0]) })
			})
		},
	}
}

func (a *app) keyCSRCmd() *cobra.Command {
	var subject, out string
	var dns []string
	c := &cobra.Command{
		Use:   `csr NAME --subject "CN=...,O=..." [--dns NAME]... [--out FILE]`,
		Short: "A PKCS#10 certificate request signed inside the TPM",
		Example: `  provd key csr tls --subject "CN=device-42,O=Acme" --dns device-42.acme.example --out tls.csr
  openssl req -in tls.csr -verify -noout`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if subject == "" {
				return usageError(fmt.Errorf("--subject is required"))
			}
			name, err := tpmkey.ParseSubject(subject)
			if err != nil {
				return usageError(err)
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				k, err := tpmkey.New(cmd.Context(), ag, args[0])
				if err != nil {
					return err
				}
				der, err := tpmkey.CSR(cmd.Context(), k, name, dns)
				if err != nil {
					return err
				}
				p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
				if out != "" && out != "-" {
					if err := writeOut(a, out, p, 0o644, store.Remakeable); err != nil {
						return err
					}
					return a.emit(map[string]any{"key": args[0], "out": out, "bytes": len(p)}, func(w io.Writer) { fmt.Fprintf(w, "CSR written to %s\n", out) })
				}
				return a.emit(map[string]string{"key": args[0], "csr_pem": string(p)}, func(w io.Writer) { w.Write(p) })
			})
		},
	}
	c.Flags().StringVar(&subject, "subject", "", `subject, e.g. "CN=device-42,O=Acme"`)
	c.Flags().StringSliceVar(&dns, "dns", nil, "DNS subject alternative name (repeat or comma-separate)")
	c.Flags().StringVar(&out, "out", "", "write the PEM CSR here")
	return c
}

func (a *app) keyExportBlobCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "export-blob NAME --out key.pem",
		Short: `Write a created key's TPM-wrapped blob as a "TSS2 PRIVATE KEY" file`,
		Long: `Write a created key's TPM-wrapped blob (public area and private part encrypted
by the PK) in the TSS2 PRIVATE KEY format of tpm2-tools and tpm2-openssl. It
loads only under this TPM's PK, through the PK's policy: a backup of the blob,
not an export of the key. Derived keys have no blob. See docs/keys.md.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError(fmt.Errorf("--out is required"))
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				p, err := ag.ExportKeyBlob(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if err := writeOut(a, out, p, 0o600, store.Durable); err != nil {
					return err
				}
				if out == "-" {
					return nil
				}
				return a.emit(map[string]string{"key": args[0], "out": out}, func(w io.Writer) { fmt.Fprintf(w, "key file written to %s\n", out) })
			})
		},
	}
	c.Flags().StringVar(&out, "out", "", "key file (PEM)")
	return c
}

func (a *app) keyImportBlobCmd() *cobra.Command {
	var in string
	c := &cobra.Command{
		Use:   "import-blob NAME --in key.pem",
		Short: `Record a key from a "TSS2 PRIVATE KEY" file made under this PK`,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return usageError(fmt.Errorf("--in is required"))
			}
			data, err := readIn(a, in)
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				k, err := ag.ImportKeyBlob(cmd.Context(), args[0], data)
				if err != nil {
					return err
				}
				return a.emit(k, func(w io.Writer) { printKey(w, k) })
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "key file (PEM)")
	return c
}

// tpmNameFlag decodes flag's value, an object's TPM name in hex; a usage
// error otherwise.
func tpmNameFlag(flag, v string) ([]byte, error) {
	name, err := hex.DecodeString(v)
	if err == nil {
		err = officer.CheckName(name)
	}
	if err != nil {
		return nil, usageError(fmt.Errorf("%s: want an object's TPM name, 68 hex digits starting 000b (provd key pub NAME -o json, or provd key list -o json, .object_name): %w", flag, err))
	}
	return name, nil
}
