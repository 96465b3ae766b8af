package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
)

func (a *app) peerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "peer",
		Short: "This device as the receiver of keys moved module to module",
		Long: `A device that receives keys from another TPM (provd dup export on the sender,
provd dup import here) publishes its peer identity: its EK certificates and the
public area of its transfer key, the storage key under which keys sent to it are
imported. See docs/transfer.md.`,
	}
	c.AddCommand(a.peerIdentityCmd(), a.peerChallengeCmd(), a.peerProveCmd())
	return c
}

func (a *app) peerChallengeCmd() *cobra.Command {
	var to, ekCA, out string
	c := &cobra.Command{
		Use:   "challenge --to peer.json --ek-ca BUNDLE --out CHALLENGE.json",
		Short: "Challenge a peer to prove its transfer key lives in its TPM (offline)",
		Long: `Make a challenge for the peer whose identity is --to: a credential to its EK
(whose certificate must chain to --ek-ca) for its transfer key's name, and the
SHA-256 of the answer it carries. Offline: no TPM, no state.

A peer identity file proves nothing by itself: its transfer key could be a
software key of someone else's, around the peer's genuine EK certificates. Only
the peer's TPM, with that transfer key loaded and authorized by the peer's provd,
opens the credential (provd peer prove on the peer). Keep this file: binding a
key or a PK to the peer (--duplicable-to) and approving a duplication to it (key
approve --dup-to) take it with the peer's proof (--challenge, --proof), and a
challenge someone else hands you proves nothing.`,
		Example: `  provd peer challenge --to device-b.peer.json --ek-ca manufacturers.pem --out device-b.challenge.json
  # on device B: provd peer prove --challenge device-b.challenge.json --out device-b.proof.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" || ekCA == "" || out == "" {
				return usageError(errors.New("--to, --ek-ca and --out are required"))
			}
			b, err := readIn(a, to)
			if err != nil {
				return err
			}
			p, err := api.ParsePeerIdentity(b)
			if err != nil {
				return err
			}
			roots, err := readIn(a, ekCA)
			if err != nil {
				return err
			}
			ch, err := agent.NewPeerChallenge(p, roots, time.Now)
			if err != nil {
				return err
			}
			j, err := json.MarshalIndent(ch, "", "  ")
			if err != nil {
				return err
			}
			res := map[string]any{"out": out, "parent_name": ch.ParentName, "ek_cert_sha256": ch.EKCertSHA256}
			return a.writeReport(out, append(j, '\n'), 0o644, res, func(w io.Writer) {
				fmt.Fprintf(w, "challenge for transfer key %.16s… (EK certificate %.16s…): %s\n", ch.ParentName, ch.EKCertSHA256, out)
			})
		},
	}
	c.Flags().StringVar(&to, "to", "", "the peer's identity (provd peer identity)")
	c.Flags().StringVar(&ekCA, "ek-ca", "", "the manufacturer certificates (PEM bundle) the peer's EK must chain to")
	c.Flags().StringVar(&out, "out", "", "where to write the challenge (- for stdout)")
	return c
}

func (a *app) peerProveCmd() *cobra.Command {
	var in, out string
	c := &cobra.Command{
		Use:   "prove --challenge CHALLENGE.json --out PROOF.json",
		Short: "Answer a challenge: prove this device's transfer key lives in its TPM",
		Long: `Activate the challenge's credential with this TPM's EK and this device's transfer
key (authorized through the PK, as for an import) and write the answer it
carries. Only a challenge is answered: a credential that is not one (a
duplicate's) is refused, so this is no oracle for what duplicates carry.`,
		Example: `  provd peer prove --challenge device-b.challenge.json --out device-b.proof.json`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || out == "" {
				return usageError(errors.New("--challenge and --out are required"))
			}
			b, err := readIn(a, in)
			if err != nil {
				return err
			}
			ch, err := api.ParsePeerChallenge(b)
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				p, err := ag.PeerProve(cmd.Context(), ch)
				if err != nil {
					return err
				}
				j, err := json.MarshalIndent(p, "", "  ")
				if err != nil {
					return err
				}
				res := map[string]any{"out": out, "parent_name": p.ParentName}
				return a.writeReport(out, append(j, '\n'), 0o644, res, func(w io.Writer) {
					fmt.Fprintf(w, "proof for transfer key %.16s…: %s\n", p.ParentName, out)
				})
			})
		},
	}
	c.Flags().StringVar(&in, "challenge", "", "the challenge (provd peer challenge)")
	c.Flags().StringVar(&out, "out", "", "where to write the proof (- for stdout)")
	return c
}

// birthRule is a duplication rule asked for at birth (key create,
// provision): --duplicable-to's proven peer, or --duplicable-by's
// authority (PEM).
type birthRule struct {
	to     *api.PeerIdentity
	proven *api.Residency
	by     string
}

// readBirthRule reads --duplicable-to (with --peer-pk, --challenge,
// --proof) or --duplicable-by; neither is the zero rule.
func readBirthRule(a *app, dupTo, dupBy, peerPK, challenge, proof string) (birthRule, error) {
	var r birthRule
	if dupTo != "" && dupBy != "" {
		return r, usageError(errors.New("--duplicable-to or --duplicable-by, not both"))
	}
	if dupTo != "" {
		p, _, proven, err := readProvenPeer(a, dupTo, peerPK, challenge, proof)
		if err != nil {
			return r, err
		}
		r.to, r.proven = &p, proven
	}
	if dupBy != "" {
		b, err := readIn(a, dupBy)
		if err != nil {
			return r, err
		}
		r.by = string(b)
	}
	return r, nil
}

// readProvenPeer is readPeer for a destination that will be bound or
// approved: it also reads the verifier's own challenge and the peer's
// proof, and checks that the proof answers the challenge for this peer's
// transfer key (api.PeerChallenge.Proven).
func readProvenPeer(a *app, path, peerPK, challenge, proof string) (api.PeerIdentity, []byte, *api.Residency, error) {
	p, name, err := readPeer(a, path, peerPK)
	if err != nil {
		return p, nil, nil, err
	}
	if challenge == "" || proof == "" {
		return p, nil, nil, usageError(errors.New("--challenge and --proof are required: the peer's transfer key must be proven resident in its TPM (provd peer challenge, then provd peer prove on the peer)"))
	}
	cb, err := readIn(a, challenge)
	if err != nil {
		return p, nil, nil, err
	}
	var r api.Residency
	if r.Challenge, err = api.ParsePeerChallenge(cb); err != nil {
		return p, nil, nil, err
	}
	pb, err := readIn(a, proof)
	if err != nil {
		return p, nil, nil, err
	}
	if r.Proof, err = api.ParsePeerProof(pb); err != nil {
		return p, nil, nil, err
	}
	if err := r.Challenge.Proven(r.Proof, p); err != nil {
		return p, nil, nil, err
	}
	return p, name, &r, nil
}

func (a *app) peerIdentityCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "identity --out peer.json",
		Short: "Write this device's peer identity (EK certificates and transfer key) for a sender",
		Long: `Write this device's peer identity: its EK certificates (from the TPM's NV), the
public area and name of its transfer key (made under the SRK, bound to the
provisioning key by its policy, the first time, then the same), its PK policy
digest and its officer's name. Nothing in it is secret.

The transfer key is for three TPM commands only: activating a sender's
credential (with the provisioning key), importing under it and loading under it.
A transfer key made by a provd before review 74, which served any command with
its authorization value, is replaced by a new one here (senders refuse the old
kind); the old one is kept for the keys received under it.

The sender verifies an EK certificate against the manufacturer's roots before it
wraps anything, and binds the duplicate's inner key, with a credential, to that
EK and this transfer key's name: only this TPM, with the transfer key loaded by
this device's provd, can import what it sends. A key works here only if the
sender's PK policy digest and officer are this device's (one fleet: one policy
signer or the same golden values, one officer); the sender checks.`,
		Example: `  provd peer identity --out device-b.peer.json`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError(errors.New("--out is required"))
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				p, err := ag.PeerIdentity(cmd.Context())
				if err != nil {
					return err
				}
				b, err := json.MarshalIndent(p, "", "  ")
				if err != nil {
					return err
				}
				res := map[string]any{"out": out, "parent_name": p.ParentName, "ek_certificates": len(p.EKCertificates)}
				return a.writeReport(out, append(b, '\n'), 0o644, res, func(w io.Writer) {
					fmt.Fprintf(w, "peer identity written to %s\ntransfer key: %s\nEK certificates: %d\n", out, p.ParentName, len(p.EKCertificates))
				})
			})
		},
	}
	c.Flags().StringVar(&out, "out", "", "where to write the peer identity (- for stdout)")
	return c
}

func (a *app) dupCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "dup",
		Short: "Move extractable keys module to module, to a peer TPM proven genuine",
		Long: `Duplicate an extractable key to a peer TPM (provd dup export, on the sender) and
import it there (provd dup import, on the receiver). The key leaves only to a
peer whose EK certificate chains to the manufacturer's roots, and only with the
crypto officer's approval of this key to this peer's transfer key, which the TPM
itself checks (PolicyDuplicationSelect). See docs/transfer.md.`,
	}
	c.AddCommand(a.dupExportCmd(), a.dupImportCmd())
	return c
}

func (a *app) dupExportCmd() *cobra.Command {
	var req api.DupExportRequest
	var to, approvalFile, out, ekCA, peerPK string
	var pk bool
	c := &cobra.Command{
		Use:   "export (NAME | --pk --peer-pk NAME) --to peer.json [--approval FILE] --ek-ca BUNDLE --out FILE",
		Short: "Duplicate an extractable key to a peer TPM",
		Long: `Duplicate extractable key NAME to the peer whose identity is --to (provd peer
identity on the receiver):

  1. the peer's EK certificate must chain to --ek-ca (or the daemon's ek_ca):
     otherwise nothing is wrapped (exit 15); a peer is never trusted on first use;
  2. the crypto officer's approval of this key to the peer's transfer key
     (provd key approve --dup-to), checked here and by the TPM; or, for a key
     created --duplicable-by, its authority's approval; a key created
     --duplicable-to that peer needs none, and goes to no other;
  3. TPM2_Duplicate with an inner AES wrapper and the outer wrapper to the peer's
     transfer key; the inner key and the key's authorization value go to the
     peer as a credential to its EK for its transfer key's name.

A key not born extractable is refused (exit 5), as is one whose policy would
not work on the peer (another PK policy or officer).

--pk moves the PK itself, with everything under it (the derivation parent, the
keys, each key's authorization value), to a peer: a replacement or backup TPM,
where the same labels then derive the same keys (provd provision --from on the
peer). Only a PK provisioned --duplicable-to that peer, or --duplicable-by an
authority whose approval is --approval; --peer-pk is the PK name enrolled for
the peer. A PK provisioned without either never leaves its TPM (exit 5). The
state travels sealed (AES-256-GCM) under a key that only the peer's TPM
recovers, with the inner wrapper's key, from the credential.`,
		Example: `  provd key approve --officer officer.key.pem --pk-policy $(provd status -o json | jq -r .policy_digest) \
      --dup-to device-b.peer.json --object-name $(provd key pub signer -o json | jq -r .object_name) --out signer.dup-b.json
  provd dup export signer --to device-b.peer.json --approval signer.dup-b.json --ek-ca manufacturers.pem --out signer.dup
  provd dup export --pk --to backup.peer.json --peer-pk 000b9e…41 --ek-ca manufacturers.pem --out pk.dup`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pk == (len(args) == 1) {
				return usageError(errors.New("give a key NAME, or --pk for the PK"))
			}
			if to == "" || out == "" {
				return usageError(errors.New("--to and --out are required"))
			}
			if pk {
				return a.pkExport(cmd, to, peerPK, approvalFile, ekCA, out)
			}
			req.Name = args[0]
			b, err := readIn(a, to)
			if err != nil {
				return err
			}
			if req.Peer, err = api.ParsePeerIdentity(b); err != nil {
				return err
			}
			if req.Approval, req.EKCA, err = readApprovalCA(a, approvalFile, ekCA); err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				d, err := ag.DupExport(cmd.Context(), req)
				if err != nil {
					return err
				}
				return a.writeDup(out, d, "key", req.Name, req.Name+" duplicated")
			})
		},
	}
	c.Flags().StringVar(&to, "to", "", "the peer's identity (provd peer identity)")
	c.Flags().StringVar(&approvalFile, "approval", "", "the crypto officer's (or the key's authority's) approval of this duplication (provd key approve --dup-to); none for a key bound to this peer at birth")
	c.Flags().StringVar(&ekCA, "ek-ca", "", "the manufacturer certificates (PEM bundle) the peer's EK must chain to (default: the daemon's ek_ca)")
	c.Flags().StringVar(&out, "out", "", "where to write the duplicate (- for stdout)")
	c.Flags().BoolVar(&pk, "pk", false, "move the PK, with everything under it (a PK provisioned --duplicable-to or --duplicable-by)")
	c.Flags().StringVar(&peerPK, "peer-pk", "", "with --pk: the PK name enrolled for the peer (provd status on it)")
	return c
}

// pkExport is dup export --pk.
func (a *app) pkExport(cmd *cobra.Command, to, peerPK, approvalFile, ekCA, out string) error {
	p, _, err := readPeer(a, to, peerPK)
	if err != nil {
		return err
	}
	req := api.PKExportRequest{Peer: p, PeerPK: peerPK}
	if req.Approval, req.EKCA, err = readApprovalCA(a, approvalFile, ekCA); err != nil {
		return err
	}
	return a.withAgent(cmd.Context(), func(ag api.Service) error {
		d, err := ag.PKExport(cmd.Context(), req)
		if err != nil {
			return err
		}
		return a.writeDup(out, d, "pk", true, "PK duplicated, with everything under it,")
	})
}

// readApprovalCA reads dup export's --approval and --ek-ca (either may be
// absent: none, and the daemon's ek_ca).
func readApprovalCA(a *app, approvalFile, ekCA string) (*policy.Approval, []byte, error) {
	ap, err := readApproval(a, approvalFile)
	if err != nil || ekCA == "" {
		return ap, nil, err
	}
	roots, err := readIn(a, ekCA)
	return ap, roots, err
}

// writeDup writes a duplicate file and reports it (dup export, dup export
// --pk): what is in the JSON report, under key what, and the text.
func (a *app) writeDup(out string, d api.DupFile, what string, value any, text string) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	res := map[string]any{what: value, "out": out, "parent_name": d.ParentName, "ek_cert_sha256": d.EKCertSHA256}
	return a.writeReport(out, append(b, '\n'), 0o644, res, func(w io.Writer) {
		fmt.Fprintf(w, "%s to transfer key %.16s… (EK certificate %.16s…): %s\n", text, d.ParentName, d.EKCertSHA256, out)
		if d.Type == api.DupTypePK {
			fmt.Fprintf(w, "the peer adopts it with provd provision --from %s --force\n", out)
		}
	})
}

func (a *app) dupImportCmd() *cobra.Command {
	var in, approvalFile string
	c := &cobra.Command{
		Use:   "import NAME --in NAME.dup [--approval FILE]",
		Short: "Import a key duplicated to this device",
		Long: `Import a key a peer duplicated to this device's transfer key: the credential is
activated with this TPM's EK and the transfer key (only this TPM can), then
TPM2_Import under the transfer key. The key keeps its policy (the fleet's PK
policy, and the officer's duplication branch: it can move on only with an
approval), and signs with the same public key as on the origin.

Nothing in a duplicate proves where it came from, so this device takes a key
only with its crypto officer's approval of that key to its transfer key: the
one the sender used (carried in the file) when the key goes by the officer's
approvals, or --approval for a key born --duplicable-to or --duplicable-by.

A duplicate made for a transfer key this device no longer has (replaced by
provd peer identity) is refused, exit 5 (made for another transfer key), or
exit 8 (state_changed) when the replacement came while the import ran:
nothing is recorded; ask the sender for a duplicate to the new one.`,
		Example: `  provd dup import signer --in signer.dup`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return usageError(errors.New("--in is required"))
			}
			b, err := readIn(a, in)
			if err != nil {
				return err
			}
			d, err := api.ParseDupFile(b)
			if err != nil {
				return err
			}
			req := api.DupImportRequest{Name: args[0], Dup: d}
			if req.Approval, err = readApproval(a, approvalFile); err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				k, err := ag.DupImport(cmd.Context(), req)
				if err != nil {
					return err
				}
				return a.emit(k, func(w io.Writer) { printKey(w, k) })
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "the duplicate (provd dup export)")
	c.Flags().StringVar(&approvalFile, "approval", "", "this device's crypto officer's approval of the key to its transfer key, when the file carries none")
	return c
}

// readPeer reads a peer identity file and checks that its transfer key is
// the one of the PK enrolled for the device (peerPK, hex: what provisioning
// reported on the device, kept with the fleet's records). provd can check
// that the EK is a genuine TPM's; only this comparison says the transfer
// key is the device's provd's, not a look-alike another process made in
// the same TPM, or a whole peer file swapped on the way.
func readPeer(a *app, path, peerPK string) (api.PeerIdentity, []byte, error) {
	b, err := readIn(a, path)
	if err != nil {
		return api.PeerIdentity{}, nil, err
	}
	p, err := api.ParsePeerIdentity(b)
	if err != nil {
		return p, nil, err
	}
	_, name, err := p.TransferKey()
	if err != nil {
		return p, nil, err
	}
	if peerPK == "" {
		return p, nil, usageError(errors.New("--peer-pk is required: the PK name enrolled for the peer device (provd status on it, at provisioning), which its transfer key must be bound to"))
	}
	if err := p.EnrolledAs(peerPK); err != nil {
		return p, nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, name, nil
}
