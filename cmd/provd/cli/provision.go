package cli

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
)

// withAgent runs fn on the daemon when its socket answers and no TPM is
// named (--tpm or $PROVD_TPM); otherwise it opens the TPM and the state and
// runs fn in-process. Both give the same results and exit codes.
func (a *app) withAgent(ctx context.Context, fn func(api.Service) error) error {
	c, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	if c != nil {
		defer c.Close()
		return fn(c)
	}
	return a.withLocalAgent(ctx, fn)
}

// withLocalAgent runs fn with an agent in this process, never the daemon.
func (a *app) withLocalAgent(ctx context.Context, fn func(api.Service) error) error {
	t, done, err := a.openTPM(ctx)
	if err != nil {
		return err
	}
	defer done()
	ag, err := agent.New(agent.Config{TPM: t, StateDir: a.stateDir, Logger: a.log, UID: os.Getuid()})
	if err != nil {
		return err
	}
	defer ag.Close()
	return fn(ag)
}

// pcrFlags are the PCR selection flags shared by provision and seal.
type pcrFlags struct {
	pcrs, bank string
}

func (p *pcrFlags) add(c *cobra.Command, defPCRs string) {
	c.Flags().StringVar(&p.pcrs, "pcrs", defPCRs, "PCRs the policy covers, comma-separated")
	c.Flags().StringVar(&p.bank, "bank", "sha256", "PCR bank: sha256 or sha384")
}

func (p *pcrFlags) parse() (policy.Bank, []int, error) {
	bank, err := policy.ParseBank(p.bank)
	if err != nil {
		return 0, nil, usageError(fmt.Errorf("--bank: %w", err))
	}
	if p.pcrs == "" {
		return bank, nil, nil
	}
	pcrs, err := policy.ParsePCRList(p.pcrs)
	if err != nil {
		return 0, nil, usageError(fmt.Errorf("--pcrs: %w", err))
	}
	return bank, pcrs, nil
}

// readSigner reads an offline signing key (a policy signer's, the crypto
// officer's) from a PEM file, clearing the file's bytes after parsing.
func readSigner(path string) (crypto.Signer, error) {
	kb, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError(err)
	}
	signer, err := policy.ParseSignerPEM(kb)
	clear(kb)
	if err != nil {
		return nil, usageError(fmt.Errorf("%s: %w", path, err))
	}
	return signer, nil
}

func readSignerPub(path string) (crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError(err)
	}
	pub, err := policy.ParsePublicKeyPEM(b)
	if err != nil {
		return nil, usageError(fmt.Errorf("%s: %w", path, err))
	}
	return pub, nil
}

func (a *app) provisionCmd() *cobra.Command {
	var pf pcrFlags
	var valuesFile, signerFile, officerFile, class string
	var dupTo, peerPK, dupBy, from, approvalFile, challenge, proof string
	var force, allowResettable bool
	var ek ekFlags
	c := &cobra.Command{
		Use:   "provision",
		Short: "Generate the provisioning key inside the TPM, sealed to a PCR policy",
		Long: `Generate the provisioning key (PK) inside the TPM under the SRK: an ECC P-256
restricted storage key that never leaves the TPM, usable only while its policy
holds.

--officer-key PUB names the crypto officer's approval key (offline; ECDSA
P-256/P-384 or RSA >= 3072). Only with it does the device get a derivation
parent, and then the TPM derives only the recipes the officer approved (provd
key approve); and only with it can keys be created --extractable, because such
a key leaves only to a destination the officer approved. Without it, anyone
who satisfies the PK's policy (root on a good boot) could re-derive a derived
key as plain data and read it (docs/key-hierarchy.md).

The PK's policy is one of:
  (default)              PolicyPCR over the current values of --pcrs
  --pcr-values FILE      PolicyPCR over golden values (provision in a factory
                         before the final firmware is measured)
  --policy-signer PUB    PolicyAuthorize(signer): the signer approves PCR values
                         later with signed policies (provd policy sign/install),
                         so keys survive firmware updates without re-provisioning

First, the TPM's identity is established as ` + "`provd tpm identity`" + ` does (its EK
certificate verified against --ek-ca, or --trust-on-first-use), and the SRK it
authenticates is pinned in the state: every later session is salted to it, and
a TPM whose SRK is not the pinned one is refused (exit 15).

Provisioning twice is refused unless --force, which zeroizes the old PK first
and keeps the pinned TPM identity. So is provisioning a new state directory on
a TPM whose audit anchor another state directory's trail holds (exit 12): its
trail would no longer verify. Use that state directory, or --force to replace
the anchor; the new trail's first record names what it replaced.

A movable PK (docs/transfer.md) can move, with everything under it, to a
replacement or backup TPM, where the same labels derive the same keys:
  --duplicable-to PEER.json --peer-pk NAME   to that peer only (provd peer
                         identity on it; its EK must chain to --ek-ca), bound
                         by the PK's own policy
  --duplicable-by AUTHORITY.pub              to any peer the authority approves,
                         one at a time (provd key approve --dup-to)
Only with --policy-signer and --officer-key. Its keys then carry
encryptedDuplication, so they move only with the PK or to peers (no PKCS#8
backups): the PK is their backup. Without these flags the PK never leaves.

--from PK.dup --force adopts a PK moved here (provd dup export --pk on the origin) in
place of this device's own: the device must be provisioned for the same fleet
(policy signer, class, officer), hold no keys, and have a transfer key (provd
peer identity); it takes the PK only with the officer's approval of it to this
transfer key (in the file, or --approval). --force says yes to losing what
was sealed under this device's own PK. The device keeps its TPM identity,
policy counter and audit trail; the PK, its derivation parent and its keys
become the origin's.`,
		Example: `  provd provision --ek-ca /etc/provd/ek-roots.pem --pcrs 0,2,4,7
  provd provision --pcr-values golden.json
  provd provision --policy-signer signer.pub.pem --officer-key officer.pub.pem
  provd provision --policy-signer signer.pub.pem --officer-key officer.pub.pem --ek-ca roots.pem \
      --duplicable-to backup.peer.json --peer-pk 000b9e…41
  provd provision --from pk.dup --approval pk.dup-approval.json --force`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from != "" {
				if others := otherFlagsSet(cmd, "from", "approval", "force"); len(others) > 0 {
					return usageError(fmt.Errorf("--from takes only --approval and --force, not --%s: the device's own policy, officer and identity stay", others[0]))
				}
				return a.provisionFrom(cmd, from, approvalFile, force)
			}
			if approvalFile != "" {
				return usageError(errors.New("--approval goes with --from"))
			}
			bank, pcrs, err := pf.parse()
			if err != nil {
				return err
			}
			id, err := ek.request()
			if err != nil {
				return err
			}
			if class != "" && signerFile == "" {
				return usageError(fmt.Errorf("--policy-class goes with --policy-signer"))
			}
			req := api.ProvisionRequest{Bank: bank, PCRs: pcrs, Force: force, AllowResettable: allowResettable, PolicyClass: class,
				EKCA: id.EKCA, EKCert: id.EKCert, TrustOnFirstUse: id.TrustOnFirstUse}
			if valuesFile != "" && signerFile != "" {
				return usageError(fmt.Errorf("--pcr-values and --policy-signer exclude each other"))
			}
			if valuesFile != "" {
				b, err := os.ReadFile(valuesFile)
				if err != nil {
					return usageError(err)
				}
				v, err := policy.ParsePCRValues(b)
				if err != nil {
					return fmt.Errorf("%s: %w", valuesFile, err)
				}
				req.Values = &v
			}
			if signerFile != "" {
				if req.Signer, err = readSignerPub(signerFile); err != nil {
					return err
				}
			}
			if officerFile != "" {
				if req.Officer, err = readSignerPub(officerFile); err != nil {
					return err
				}
			}
			r, err := readBirthRule(a, dupTo, dupBy, peerPK, challenge, proof)
			if err != nil {
				return err
			}
			req.DuplicableTo, req.PeerPK, req.Residency, req.DuplicableBy = r.to, peerPK, r.proven, r.by
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				res, err := ag.Provision(cmd.Context(), req)
				if err != nil {
					return err
				}
				return a.emit(res, func(w io.Writer) {
					fmt.Fprintf(w, "provisioned\nPK name:       %s\npolicy:        %s %s\n", res.PKName, res.PolicyKind, res.PolicyDigest)
					if res.TPMTrust == api.TrustOnFirstUse {
						fmt.Fprintln(w, "TPM identity:  pinned on TRUST ON FIRST USE (no manufacturer vouched for its EK)")
					} else {
						fmt.Fprintln(w, "TPM identity:  pinned, EK certified by a trusted manufacturer")
					}
					if res.Officer != "" {
						fmt.Fprintf(w, "officer:       %s (derivations and exports need its approval)\n", res.Officer)
					} else {
						fmt.Fprintln(w, "officer:       none (no derived and no extractable keys: provision --officer-key)")
					}
					if res.DName != "" {
						fmt.Fprintf(w, "derivation parent: %s\n", res.DName)
					}
					if res.Movable != "" {
						fmt.Fprintf(w, "movable:       %s (provd dup export --pk)\n", res.Movable)
					}
					if len(res.PCRs) > 0 {
						fmt.Fprintf(w, "PCRs:          %s %s\n", res.Bank, joinInts(res.PCRs))
					}
					if res.Counter != nil {
						fmt.Fprintf(w, "policy counter %s at %d: sign policies with --version %d or higher, then provd policy install\n",
							res.CounterHandle, *res.Counter, *res.Counter)
					}
				})
			})
		},
	}
	pf.add(c, "0,2,4,7")
	c.Flags().StringVar(&valuesFile, "pcr-values", "", "seal to golden PCR values from FILE (JSON, docs/policy.md)")
	c.Flags().StringVar(&class, "policy-class", "", "with --policy-signer: the fleet or device class signed policies must name (provd policy sign --class)")
	c.Flags().StringVar(&signerFile, "policy-signer", "", "seal to PolicyAuthorize of this public key (PEM; ECDSA P-256/P-384 or RSA-PSS >= 3072)")
	c.Flags().StringVar(&officerFile, "officer-key", "", "the crypto officer's public approval key (PEM): enables derived and extractable keys, each approved by the officer")
	c.Flags().BoolVar(&force, "force", false, "zeroize an existing PK and provision again; in a new state directory, replace another state's audit anchor")
	c.Flags().BoolVar(&allowResettable, "allow-resettable", false, "admit PCRs 16..23, which software can reset (tests and demonstrations only)")
	c.Flags().StringVar(&dupTo, "duplicable-to", "", "make the PK movable to this peer only (provd peer identity on it)")
	c.Flags().StringVar(&peerPK, "peer-pk", "", "with --duplicable-to: the PK name enrolled for the peer, hex")
	c.Flags().StringVar(&challenge, "challenge", "", "with --duplicable-to: your challenge to the peer (provd peer challenge)")
	c.Flags().StringVar(&proof, "proof", "", "with --duplicable-to: the peer's answer (provd peer prove)")
	c.Flags().StringVar(&dupBy, "duplicable-by", "", "make the PK movable to peers this authority approves (PEM public key)")
	c.Flags().StringVar(&from, "from", "", "adopt the PK moved here in this file (provd dup export --pk), in place of this device's")
	c.Flags().StringVar(&approvalFile, "approval", "", "with --from: the officer's approval of that PK to this device's transfer key, when the file carries none")
	ek.add(a, c)
	return c
}

// provisionFrom is provision --from.
func (a *app) provisionFrom(cmd *cobra.Command, from, approvalFile string, force bool) error {
	b, err := readIn(a, from)
	if err != nil {
		return err
	}
	d, err := api.ParseDupFile(b)
	if err != nil {
		return err
	}
	req := api.PKAdoptRequest{Dup: d, Force: force}
	if req.Approval, err = readApproval(a, approvalFile); err != nil {
		return err
	}
	return a.withAgent(cmd.Context(), func(ag api.Service) error {
		res, err := ag.ProvisionFrom(cmd.Context(), req)
		if err != nil {
			return err
		}
		return a.emit(res, func(w io.Writer) {
			fmt.Fprintf(w, "adopted the PK %s with everything under it\npolicy:        %s %s\nderivation parent: %s\nmovable:       %s\n",
				res.PKName, res.PolicyKind, res.PolicyDigest, res.DName, res.Movable)
		})
	})
}

// otherFlagsSet lists cmd's own flags set on the command line other than
// names.
func otherFlagsSet(cmd *cobra.Command, names ...string) []string {
	var set []string
	cmd.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Changed && !slices.Contains(names, f.Name) {
			set = append(set, f.Name)
		}
	})
	return set
}

func (a *app) zeroizeCmd() *cobra.Command {
	var yes, srk bool
	c := &cobra.Command{
		Use:   "zeroize",
		Short: "Destroy the PK, every key and every TPM object and NV index provd created",
		Long: `Flush and evict every TPM object and NV index provd created, overwrite and remove
the state's blob files, and record the zeroization in the audit trail (the trail
is then archived beside the state as audit-<time>.log, its NV anchor removed and
the trail's gate key evicted from 0x81007601). The EK is never touched; --srk
evicts the SRK too. This cannot be undone.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !yes {
				return usageError(fmt.Errorf("zeroize destroys every key: pass --yes"))
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				res, err := ag.Zeroize(cmd.Context(), api.ZeroizeOptions{SRK: srk})
				if err != nil {
					return err
				}
				return a.emit(res, func(w io.Writer) {
					fmt.Fprintf(w, "zeroized: NV indices %s removed, %d transient handles flushed, audit gate evicted: %v, SRK evicted: %v\n",
						strings.Join(res.NVIndices, " "), res.Flushed, res.GateEvicted, res.SRKEvicted)
					if res.Authenticated {
						fmt.Fprintln(w, "confirmed by the TPM (responses and read-back authenticated by a session salted to the pinned SRK)")
					} else {
						fmt.Fprintln(w, "NOT authenticated: no SRK is pinned, so what the TPM answered could have been written by anything on the bus")
					}
					if res.AuditLog != "" {
						fmt.Fprintf(w, "audit trail archived: %s\n", res.AuditLog)
					}
				})
			})
		},
	}
	c.Flags().BoolVar(&yes, "yes", false, "confirm")
	c.Flags().BoolVar(&srk, "srk", false, "also evict the SRK (0x81000001)")
	return c
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}
