package cli

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/provd/provd/policy"
)

func (a *app) pcrCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "pcr",
		Short: "Read and extend PCRs",
	}
	var bank, pcrs string
	read := &cobra.Command{
		Use:   "read",
		Short: "Print PCR values; with -o json, in the --pcr-values file format of provision and policy sign",
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
			vals, err := t.PCRRead(b.Alg(), idx)
			if err != nil {
				return err
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
