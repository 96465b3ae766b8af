package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"sort"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
)

func (a *app) policyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Signed PCR policies: sign (offline), install, show",
	}
	c.AddCommand(a.policySignCmd(), a.policyInstallCmd(), a.policyShowCmd())
	return c
}

func (a *app) policySignCmd() *cobra.Command {
	var signerFile, valuesFile, out, class string
	var version uint64
	var allowResettable bool
	c := &cobra.Command{
		Use:   "sign",
		Short: "Sign a policy approving PCR values (offline, no TPM)",
		Long: `Sign, offline, a policy that approves the PCR values in --pcr-values for every
device provisioned with --policy-signer set to this key's public half. The policy
carries --version: installing it on a device moves the device's policy counter up
to that version, which revokes every older policy in the TPM itself. Pick a
version at least the device's counter (provd policy show).

Signer keys: ECDSA P-256, P-384, or RSA >= 3072 (RSA-PSS), PEM (PKCS#8, SEC1 or
PKCS#1), unencrypted.`,
		Example: `  provd policy sign --signer signer.key.pem --pcr-values golden.json --version 2 --out policy.json`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if signerFile == "" || valuesFile == "" || out == "" || !cmd.Flags().Changed("version") {
				return usageError(errors.New("--signer, --pcr-values, --version and --out are required"))
			}
			signer, err := readSigner(signerFile)
			if err != nil {
				return err
			}
			vb, err := os.ReadFile(valuesFile)
			if err != nil {
				return usageError(err)
			}
			vals, err := policy.ParsePCRValues(vb)
			if err != nil {
				return fmt.Errorf("%s: %w", valuesFile, err)
			}
			sp, err := agent.SignPKPolicy(signer, vals, version, class, allowResettable)
			if err != nil {
				return err
			}
			b, err := sp.MarshalJSON()
			if err != nil {
				return err
			}
			if err := writeOut(a, out, b, 0o644, store.Durable); err != nil {
				return err
			}
			res := struct {
				Out     string `json:"out"`
				Version uint64 `json:"version"`
				PCRs    []int  `json:"pcrs"`
			}{out, version, vals.Indices()}
			return a.emit(res, func(w io.Writer) {
				if out != "-" {
					fmt.Fprintf(w, "signed policy version %d for %s PCR %s: %s\n", version, vals.Bank, joinInts(vals.Indices()), out)
				}
			})
		},
	}
	c.Flags().StringVar(&signerFile, "signer", "", "signer's private key (PEM)")
	c.Flags().StringVar(&valuesFile, "pcr-values", "", "PCR values to approve (JSON, docs/policy.md)")
	c.Flags().Uint64Var(&version, "version", 0, "policy version (>= the device's policy counter)")
	c.Flags().StringVar(&out, "out", "", "where to write policy.json (- for stdout)")
	c.Flags().BoolVar(&allowResettable, "allow-resettable", false, "approve PCRs 16..23, which software can reset (tests and demonstrations; devices refuse such a policy unless provisioned with --allow-resettable)")
	c.Flags().StringVar(&class, "class", "", "the device class the policy is for (as given to provision --policy-class); a policy for one class does not unlock another")
	return c
}

func (a *app) policyInstallCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "install POLICY.json",
		Short: "Install a signed policy for the PK (revokes older versions)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := readIn(a, args[0])
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				res, err := ag.InstallPolicy(cmd.Context(), b)
				if err != nil {
					return err
				}
				return a.emit(res, func(w io.Writer) {
					fmt.Fprintf(w, "installed signed policy version %d (policy counter %d)\n", res.Version, res.Counter)
					if res.Satisfied {
						fmt.Fprintln(w, "the platform satisfies it now")
					} else {
						fmt.Fprintf(w, "not satisfied yet: PCR %s differ (it applies once the platform measures as approved)\n", joinInts(res.Differ))
					}
				})
			})
		},
	}
}

func (a *app) policyShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Show the PK's policy, the PCR values it needs, the current ones, and which differ",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				ps, err := ag.ShowPolicy(cmd.Context())
				if err != nil {
					return err
				}
				return a.emit(ps, func(w io.Writer) { printPolicy(w, ps) })
			})
		},
	}
}

func printPolicy(w io.Writer, ps api.PolicyState) {
	fmt.Fprintf(w, "policy:     %s %s\n", ps.Kind, ps.Digest)
	if s := ps.Signed; s != nil {
		if s.Installed {
			fmt.Fprintf(w, "signed:     version %d installed, policy counter %d, signer %s\n", s.Version, s.Counter, s.Signer)
		} else {
			fmt.Fprintf(w, "signed:     none installed, policy counter %d, signer %s\n", s.Counter, s.Signer)
		}
	}
	idx := make([]int, 0, len(ps.Needed))
	for i := range ps.Needed {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	differ := map[int]bool{}
	for _, i := range ps.Differ {
		differ[i] = true
	}
	for _, i := range idx {
		mark := "ok"
		if ps.Current[i] != ps.Needed[i] {
			mark = "DIFFERS"
		}
		fmt.Fprintf(w, "%s PCR %-2d  %-7s needed %s\n              current %s\n", ps.Bank, i, mark, ps.Needed[i], ps.Current[i])
	}
	if ps.Satisfied {
		fmt.Fprintln(w, "satisfied:  yes")
	} else {
		fmt.Fprintf(w, "satisfied:  no %s\n", ps.Reason)
	}
}

// maxInput bounds what a command reads from a file or stdin: the largest
// input any operation takes (hmac, encrypt, decrypt).
const maxInput = agent.MaxDataInput

// readIn reads FILE or stdin ("-"), refusing more than maxInput bytes rather
// than silently using a prefix (a signature over the first bytes of a stream
// would be worse than none).
func readIn(a *app, path string) ([]byte, error) {
	var r io.Reader = a.deps.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageError(err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxInput {
		clear(b)
		return nil, usageError(fmt.Errorf("%s: more than %d bytes", path, maxInput))
	}
	return b, nil
}

// outputTo writes b to out (writeOut) and, with -o json and out a file,
// reports it: {"out", "bytes"} and fields (names and hex, never the bytes):
// no command is silent under -o json. In text a file written is silent, as
// Unix tools are, and "-" carries the bytes themselves.
func (a *app) outputTo(out string, b []byte, mode os.FileMode, fields map[string]any) error {
	if err := writeOut(a, out, b, mode, store.Durable); err != nil {
		return err
	}
	if out == "-" || a.output != "json" {
		return nil
	}
	res := map[string]any{"out": out, "bytes": len(b)}
	maps.Copy(res, fields)
	return a.emit(res, nil)
}

// writeReport writes b to out (writeOut) and, unless it went to stdout,
// reports what was written: res under -o json, text otherwise.
func (a *app) writeReport(out string, b []byte, mode os.FileMode, res map[string]any, text func(w io.Writer)) error {
	if err := writeOut(a, out, b, mode, store.Durable); err != nil {
		return err
	}
	if out == "-" {
		return nil
	}
	return a.emit(res, text)
}

// readApproval reads an officer's approval (provd key approve output) from
// path ("-": stdin); "" is none.
func readApproval(a *app, path string) (*policy.Approval, error) {
	if path == "" {
		return nil, nil
	}
	ap := new(policy.Approval)
	if err := readApprovalInto(a, path, ap); err != nil {
		return nil, err
	}
	return ap, nil
}

// readApprovalInto reads an approval file of provd key approve (an
// approval, or an export approval) from path ("-": stdin) into ap.
func readApprovalInto(a *app, path string, ap json.Unmarshaler) error {
	b, err := readIn(a, path)
	if err != nil {
		return err
	}
	if err := ap.UnmarshalJSON(b); err != nil {
		return usageError(fmt.Errorf("--approval: %w", err))
	}
	return nil
}

// writeOut writes a command's output to path (store.WriteOutput: a regular
// file atomically with mode, synced unless d is store.Remakeable; a device,
// FIFO or socket written to, never replaced), or to stdout ("-"). A refused
// path is a usage error.
func writeOut(a *app, path string, b []byte, mode os.FileMode, d store.Durability) error {
	if path == "-" {
		_, err := a.deps.Stdout.Write(b)
		return err
	}
	err := store.WriteOutput(path, b, mode, d)
	if errors.Is(err, store.ErrOutput) || errors.Is(err, fs.ErrNotExist) {
		// A refused path, or one whose directory does not exist: the
		// user's to fix, as a missing --in is.
		return usageError(err)
	}
	return err
}
