package cli

import (
	"encoding/hex"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
)

func (a *app) sealCmd() *cobra.Command {
	var pf pcrFlags
	var in, out, signerFile string
	var allowResettable bool
	c := &cobra.Command{
		Use:   "seal",
		Short: "Seal a secret under the PK to a PCR policy",
		Long: `Seal a secret (a file, or stdin with --in -) under the provisioning key. It can
be unsealed only on this TPM, while the PK's policy and the secret's own policy
hold. Without --pcrs or --policy-signer the secret gets the PK's own policy.
Secrets up to 128 bytes are sealed in the TPM directly; larger ones (up to 1 MiB)
are encrypted with AES-256-GCM under a sealed key. The blob format is in
docs/formats.md.`,
		Example: `  provd seal --in disk.key --out disk.key.sealed
  echo -n s3cret | provd seal --pcrs 7,16 --in - --out secret.sealed`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || out == "" {
				return usageError(fmt.Errorf("--in and --out are required"))
			}
			bank, pcrs, err := pf.parse()
			if err != nil {
				return err
			}
			data, err := readIn(a, in)
			if err != nil {
				return err
			}
			defer clear(data)
			req := api.SealRequest{Data: data, Bank: bank, PCRs: pcrs, AllowResettable: allowResettable}
			if signerFile != "" {
				if req.Signer, err = readSignerPub(signerFile); err != nil {
					return err
				}
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				blob, err := ag.Seal(cmd.Context(), req)
				if err != nil {
					return err
				}
				if err := writeOut(a, out, blob, 0o600, store.Durable); err != nil {
					return err
				}
				if out == "-" {
					return nil
				}
				return a.emit(map[string]any{"out": out, "bytes": len(blob)}, func(w io.Writer) {
					fmt.Fprintf(w, "sealed %d bytes to %s\n", len(data), out)
				})
			})
		},
	}
	pf.add(c, "")
	c.Flags().StringVar(&in, "in", "", "secret to seal (FILE, or - for stdin)")
	c.Flags().StringVar(&out, "out", "", "sealed blob (FILE, or - for stdout)")
	c.Flags().StringVar(&signerFile, "policy-signer", "", "seal to PolicyAuthorize of this public key (PEM)")
	c.Flags().BoolVar(&allowResettable, "allow-resettable", false, "admit PCRs 16..23, which software can reset (tests and demonstrations only)")
	return c
}

func (a *app) unsealCmd() *cobra.Command {
	var in, out string
	c := &cobra.Command{
		Use:   "unseal",
		Short: "Unseal a sealed blob (exit 3 when the PCRs do not satisfy its policy)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || out == "" {
				return usageError(fmt.Errorf("--in and --out are required"))
			}
			blob, err := readIn(a, in)
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				secret, err := ag.Unseal(cmd.Context(), blob)
				if err != nil {
					return err
				}
				defer clear(secret)
				if out == "-" && a.output == "json" {
					return a.emit(map[string]string{"secret_hex": hex.EncodeToString(secret)}, nil)
				}
				// Found by the JSON walk: with a file, -o json printed
				// nothing.
				return a.outputTo(out, secret, 0o600, nil)
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "sealed blob (FILE, or - for stdin)")
	c.Flags().StringVar(&out, "out", "", "where to write the secret (FILE, mode 0600, or - for stdout)")
	return c
}
