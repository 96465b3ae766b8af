package cli

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

func (a *app) pcrCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "pcr",
		Short: "Read and extend PCRs",
	}
	var bank, pcrs string
	var unauthenticated bool
	read := &cobra.Command{
		Use:   "read",
		Short: "Print PCR values; with -o json, in the --pcr-values file format of provision and policy sign",
		Long: `Print PCR values. On a device whose state pins the TPM's identity (provd
provision), they are read in a session salted to the pinned SRK, so that the
TPM's response HMAC covers them: nothing on the bus can choose them. Without a
pinned identity they are only what the bus says; then -o json, the golden-value
file that policies are signed over, needs --unauthenticated, said knowingly.`,
		Example: `  provd tpm pcr read --pcrs 0,2,4,7
  provd tpm pcr read --pcrs 7,16 -o json > golden.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := policy.ParseBank(bank)
			if err != nil {
				return usageError(err)
			}
			idx, err := policy.ParsePCRList(pcrs)
			if err != nil {
				return usageError(fmt.Errorf("--pcrs: %w", err))
			}
			t, done, err := a.openTPM(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			vals, authenticated, err := a.readPCRs(cmd.Context(), t, b, idx)
			if err != nil {
				return err
			}
			if !authenticated {
				if a.output == "json" && !unauthenticated {
					return fmt.Errorf("%w: no TPM identity is pinned in %s, so these PCR values would be only what the bus says; provision first (provd provision --ek-ca), or pass --unauthenticated knowingly", api.ErrUntrustedTPM, a.stateDir)
				}
				fmt.Fprintln(a.deps.Stderr, "provd: not authenticated: no TPM identity pinned in the state (the values are what the bus says)")
			}
			pv := policy.PCRValues{Bank: b, Values: vals}
			return a.emit(pv, func(w io.Writer) {
				for _, i := range pv.Indices() {
					fmt.Fprintf(w, "%s:%-2d %s\n", b, i, hex.EncodeToString(vals[i]))
				}
			})
		},
	}
	read.Flags().StringVar(&bank, "bank", "sha256", "PCR bank")
	read.Flags().BoolVar(&unauthenticated, "unauthenticated", false, "with -o json, write values read without a pinned TPM identity (the bus's word)")
	read.Flags().StringVar(&pcrs, "pcrs", "0,1,2,3,4,5,6,7", "PCRs to read")

	var data, ebank string
	extend := &cobra.Command{
		Use:   "extend PCR --data TEXT",
		Short: "Extend a PCR with the digest of TEXT (for tests and demos; measured boot does this on devices)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pcrs, err := policy.ParsePCRList(args[0])
			if err != nil || len(pcrs) != 1 {
				return usageError(fmt.Errorf("PCR %q: want one decimal 0..%d", args[0], policy.MaxPCR))
			}
			idx := pcrs[0]
			if !cmd.Flags().Changed("data") {
				return usageError(fmt.Errorf("--data is required: the text whose digest is extended (an extend cannot be undone)"))
			}
			b, err := policy.ParseBank(ebank)
			if err != nil {
				return usageError(err)
			}
			var digest []byte
			if b == policy.BankSHA384 {
				d := sha512.Sum384([]byte(data))
				digest = d[:]
			} else {
				d := sha256.Sum256([]byte(data))
				digest = d[:]
			}
			t, done, err := a.openTPM(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			if err := t.PCRExtend(idx, b.Alg(), digest); err != nil {
				return err
			}
			vals, err := t.PCRRead(b.Alg(), []int{idx})
			if err != nil {
				return err
			}
			res := struct {
				PCR   int    `json:"pcr"`
				Bank  string `json:"bank"`
				Value string `json:"value"`
			}{idx, b.String(), hex.EncodeToString(vals[idx])}
			return a.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "%s:%d extended, now %x\n", b, idx, vals[idx])
			})
		},
	}
	extend.Flags().StringVar(&data, "data", "", "text whose digest is extended")
	extend.Flags().StringVar(&ebank, "bank", "sha256", "PCR bank")
	c.AddCommand(read, extend)
	return c
}

// readPCRs reads PCRs authenticated when the state directory pins the TPM's
// identity (agent.ReadPCRs), and plainly when there is no state: reading PCRs
// never creates a state directory.
func (a *app) readPCRs(ctx context.Context, t *tpm.TPM, b policy.Bank, idx []int) (map[int][]byte, bool, error) {
	dir, err := a.resolvedStateDir()
	if err != nil {
		return nil, false, err
	}
	if _, err := os.Stat(dir); err != nil {
		vals, err := t.PCRRead(b.Alg(), idx)
		return vals, false, err
	}
	ag, err := agent.New(agent.Config{TPM: t, StateDir: dir, Logger: a.log})
	if err != nil {
		return nil, false, err
	}
	defer ag.Close()
	return ag.ReadPCRs(ctx, b, idx)
}
