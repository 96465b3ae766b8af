package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/keywrap"
)

func (a *app) kekCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "kek",
		Short: "Key-encryption keys entered from custodians' components (split knowledge)",
		Long: `A key-encryption key (KEK) is an AES-128 or AES-256 key that custodians enter as
components, each with its key check value (KCV: the first 3 bytes of
AES-ECB(component, zero block), as HSMs print them). provd checks every KCV,
XORs the components in memory, shows the combined key's KCV, creates the key in
the TPM under the provisioning key (the bits cross the bus encrypted) and checks
that the TPM's own KCV of it is the custodians'. The KEK never leaves the TPM:
provd key export and provd key import wrap and unwrap backups with it, block by
block inside the TPM. provd key list shows KEKs and their KCVs; provd key delete
removes one. See docs/transfer.md.`,
	}
	c.AddCommand(a.kekImportCmd())
	return c
}

func (a *app) kekImportCmd() *cobra.Command {
	var src componentSource
	var kcv, usage string
	c := &cobra.Command{
		Use:   "import NAME --components N [--component-fd FD]... [--kcv KCV] [--usage wrap|unwrap]",
		Short: "Enter a KEK from N custodians' components, each checked against its KCV",
		Long: `Enter an AES KEK from N (2 or more) components of 16 or 32 bytes.

On a terminal each custodian in turn types their component (hex, not echoed;
spaces or dashes between groups are fine) and its KCV (not echoed either; shown
once it checks); a component that does not
match its KCV is refused at once. Then the combined key's KCV is shown for the
custodians to compare with the key's record, unless --kcv gives it.

Without a terminal, each custodian's entry comes from a file descriptor of its
own (--component-fd, once per component): two lines, the component in hex and
its KCV; --kcv is then required. Components are never taken from flags, named
files or the environment.

Nothing is imported unless every KCV matches (exit code 16). The audit trail
records each component's KCV and the combined KCV, never a component.

--usage decides the one direction the TPM lets the KEK work in: wrap (the
default) makes backups (provd key export) and cannot open one; unwrap opens
backups (provd key import) and cannot make one. Enter an unwrapping KEK only on
the device that imports, for the time of the import, and delete it after
(provd key delete): a device that only makes backups then holds nothing that
opens them.`,
		Example: `  provd kek import backup-kek --components 3
  provd kek import backup-kek --components 2 --component-fd 3 --component-fd 4 --kcv 5d6e1f \
      3<custodian1.txt 4<custodian2.txt`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			comps, err := a.readComponents(src)
			if err != nil {
				return err
			}
			defer comps.wipe()
			combined, err := a.combinedKCV(comps, kcv)
			if err != nil {
				return err
			}
			req := api.KEKImportRequest{Name: args[0], Components: comps.parts, KCVs: comps.kcvs, KCV: combined, Usage: usage}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				if _, viaDaemon := ag.(*client.Client); viaDaemon {
					fmt.Fprintln(a.deps.Stderr, "provd: note: the components go to the daemon over its socket, and Go's JSON decoding there leaves copies in its memory that provd cannot clear (docs/threat-model.md); for a ceremony, --tpm runs it in this process")
				}
				k, err := ag.ImportKEK(cmd.Context(), req)
				if err != nil {
					return err
				}
				return a.emit(k, func(w io.Writer) {
					printKey(w, k)
					fmt.Fprintf(w, "KCV:         %s\n", k.KCV)
				})
			})
		},
	}
	c.Flags().IntVar(&src.n, "components", 0, "how many components (custodians), 2 or more")
	c.Flags().IntSliceVar(&src.fds, "component-fd", nil, "read one custodian's component and KCV from this file descriptor (repeat per component)")
	c.Flags().StringVar(&kcv, "kcv", "", "the combined key's KCV (6 hex digits), required without a terminal")
	c.Flags().StringVar(&usage, "usage", "wrap", "wrap (make backups: key export) or unwrap (open them: key import)")
	return c
}

func (a *app) keyExportCmd() *cobra.Command {
	var req api.KeyExportRequest
	var approvalFile, out string
	c := &cobra.Command{
		Use:   "export NAME --kek KEK --approval FILE --out NAME.p8.kwp",
		Short: "Back up an extractable key as PKCS#8 under AES key wrap with padding (RFC 5649)",
		Long: `Write an extractable RSA or ECC key as PKCS#8 PrivateKeyInfo (RFC 5208/5958)
wrapped with AES key wrap with padding (RFC 5649, NIST SP 800-38F KWP) under a KEK
in the TPM (provd kek import, usage wrap): what an HSM's C_UnwrapKey with
CKM_AES_KEY_WRAP_PAD takes, and what

  openssl enc -d -id-aes256-wrap-pad -K <KEK hex> -iv A65959A6 -in NAME.p8.kwp

unwraps. The file is the wrap's bytes, nothing else (docs/formats.md).

Only a key created --extractable leaves (exit code 5 otherwise, before the TPM is
asked), and only with the crypto officer's approval of this export under this KEK
(provd key approve --export --kek-object-name): the TPM checks its first part
(the key's duplication branch needs it), provd its second, and wraps under no
other KEK, so a KEK one operator entered alone does not serve (exit code 5).
The private key is in provd's memory only for the call; the wrap runs
inside the TPM, block by block, so the KEK never leaves it. The KEK must be at
least as strong as the key: AES-256 for RSA-3072 and up and for P-384.`,
		Example: `  provd key approve --export --officer officer.key.pem --pk-policy $(provd status -o json | jq -r .policy_digest) \
      --object-name $(provd key pub signer -o json | jq -r .object_name) \
      --kek-object-name 000b91…07 --out signer.export.json   # the TPM name kek import printed
  provd key export signer --kek backup-kek --approval signer.export.json --out signer.p8.kwp`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if req.KEK == "" || out == "" || approvalFile == "" {
				return usageError(errors.New("--kek, --approval and --out are required"))
			}
			req.Approval = new(api.ExportApproval)
			if err := readApprovalInto(a, approvalFile, req.Approval); err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				wrapped, err := ag.ExportKey(cmd.Context(), req)
				if err != nil {
					return err
				}
				res := map[string]any{"key": req.Name, "kek": req.KEK, "out": out, "bytes": len(wrapped)}
				return a.writeReport(out, wrapped, 0o600, res, func(w io.Writer) {
					fmt.Fprintf(w, "%s exported under KEK %s to %s (%d bytes, PKCS#8 in RFC 5649 key wrap)\n", req.Name, req.KEK, out, len(wrapped))
				})
			})
		},
	}
	c.Flags().StringVar(&req.KEK, "kek", "", "the KEK (provd kek import)")
	c.Flags().StringVar(&approvalFile, "approval", "", "the crypto officer's approval of this export under this KEK (provd key approve --export)")
	c.Flags().StringVar(&out, "out", "", "where to write the wrapped key (- for stdout)")
	return c
}

func (a *app) keyImportCmd() *cobra.Command {
	var req api.KeyImportRequest
	var in string
	c := &cobra.Command{
		Use:   "import NAME --in FILE --kek KEK [--usage sign|decrypt] [--extractable]",
		Short: "Bring a PKCS#8 key wrapped under a KEK (RFC 5649) into the TPM",
		Long: `Unwrap a PKCS#8 backup (provd key export, or another HSM's C_WrapKey with
CKM_AES_KEY_WRAP_PAD) inside the TPM with the KEK (provd kek import --usage
unwrap, from the same components as the one that wrapped it), and import the
key under the
provisioning key. A file not wrapped under that KEK, or changed, imports nothing
(exit code 14). Approved types only: RSA 2048-4096 with exponent 65537, ECC
P-256 and P-384.

The key is not extractable unless --extractable: the TPM requires an imported
key's fixedTPM and fixedParent clear, so its policy decides, and without
--extractable it has no duplication branch: TPM2_Duplicate fails inside the TPM.`,
		Example: `  provd key import signer --in signer.p8.kwp --kek backup-kek`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if req.KEK == "" || in == "" {
				return usageError(errors.New("--kek and --in are required"))
			}
			var err error
			if req.Wrapped, err = readIn(a, in); err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				k, err := ag.ImportKey(cmd.Context(), req)
				if err != nil {
					return err
				}
				return a.emit(k, func(w io.Writer) { printKey(w, k) })
			})
		},
	}
	c.Flags().StringVar(&req.KEK, "kek", "", "the KEK the file is wrapped under")
	c.Flags().StringVar(&in, "in", "", "the wrapped key (- for stdin)")
	c.Flags().StringVar(&req.Usage, "usage", "", "sign or decrypt (default sign)")
	c.Flags().BoolVar(&req.Extractable, "extractable", false, "allow it to leave again, with the officer's approval (decided now, forever)")
	return c
}

func (a *app) keyRecoverCmd() *cobra.Command {
	var src componentSource
	var kcv, in, out string
	var asPEM bool
	c := &cobra.Command{
		Use:   "recover --in NAME.p8.kwp --components N [--component-fd FD]... [--kcv KCV] --out key.p8",
		Short: "Unwrap a key backup offline, with the KEK's components (no TPM, no state)",
		Long: `For an air-gapped recovery host: the custodians enter the KEK's components as
for provd kek import (each checked against its KCV, then the combined KCV), and
provd unwraps the backup in software and writes the PKCS#8 private key (DER, or
PEM with --pem), mode 0600. It needs no TPM and no state directory. The output is
a plaintext private key: write it only where the recovery procedure says.`,
		Example: `  provd key recover --in signer.p8.kwp --components 3 --out signer.p8`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || out == "" {
				return usageError(errors.New("--in and --out are required"))
			}
			wrapped, err := readIn(a, in)
			if err != nil {
				return err
			}
			if err := keywrap.CheckWrapped(wrapped); err != nil {
				return fmt.Errorf("%w: %s: %w", api.ErrBadInput, in, err)
			}
			comps, err := a.readComponents(src)
			if err != nil {
				return err
			}
			defer comps.wipe()
			combined, err := a.combinedKCV(comps, kcv)
			if err != nil {
				return err
			}
			key, err := agent.CombineComponents(comps.parts, comps.kcvs, combined)
			if err != nil {
				return err
			}
			defer clear(key)
			der, err := keywrap.Unwrap(key, wrapped)
			if err != nil {
				return fmt.Errorf("%s is not wrapped under this KEK, or was changed: %w", in, err)
			}
			defer clear(der)
			k, err := x509.ParsePKCS8PrivateKey(der)
			if err != nil {
				return fmt.Errorf("%w: the unwrapped key is not PKCS#8", api.ErrBadInput)
			}
			outBytes := der
			if asPEM {
				outBytes = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
				defer clear(outBytes)
			}
			// Recovery writes what the backup holds, approved type or not
			// (another HSM's backup may hold any): the type is only named.
			typeName := fmt.Sprintf("%T", k)
			if kt, err := catalog.PrivateType(k); err == nil {
				typeName = kt.Name
			}
			res := map[string]any{"in": in, "out": out, "key_type": typeName}
			return a.writeReport(out, outBytes, 0o600, res, func(w io.Writer) {
				fmt.Fprintf(w, "PKCS#8 private key written to %s (mode 0600)\n", out)
			})
		},
	}
	c.Flags().StringVar(&in, "in", "", "the wrapped key (provd key export)")
	c.Flags().StringVar(&out, "out", "", "where to write the PKCS#8 private key")
	c.Flags().BoolVar(&asPEM, "pem", false, "write PEM (PRIVATE KEY) instead of DER")
	c.Flags().IntVar(&src.n, "components", 0, "how many KEK components, 2 or more")
	c.Flags().IntSliceVar(&src.fds, "component-fd", nil, "read one custodian's component and KCV from this file descriptor (repeat per component)")
	c.Flags().StringVar(&kcv, "kcv", "", "the KEK's KCV (6 hex digits), required without a terminal")
	return c
}
