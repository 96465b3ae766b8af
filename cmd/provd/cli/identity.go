package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/provd/provd/api"
)

// ekFlags are how a command trusts the TPM's endorsement key at first
// contact: tpm identity and provision take the same three.
type ekFlags struct {
	caFile, certFile string
	tofu             bool
}

func (f *ekFlags) add(a *app, c *cobra.Command) {
	c.Flags().StringVar(&f.caFile, "ek-ca", a.deps.Getenv("PROVD_EK_CA"), "PEM bundle of the manufacturer certificates that vouch for EK certificates (env PROVD_EK_CA)")
	c.Flags().StringVar(&f.certFile, "ek-cert", "", "the TPM's EK certificate (DER or PEM), for a TPM that keeps none in NV")
	c.Flags().BoolVar(&f.tofu, "trust-on-first-use", false, "with no --ek-ca, accept the EK certificate unverified (recorded and shown); never overrides a refusal by --ek-ca")
}

// request reads the files the flags name.
func (f *ekFlags) request() (api.IdentityRequest, error) {
	req := api.IdentityRequest{TrustOnFirstUse: f.tofu}
	var err error
	if f.caFile != "" {
		if req.EKCA, err = os.ReadFile(f.caFile); err != nil {
			return req, usageError(fmt.Errorf("--ek-ca: %w", err))
		}
	}
	if f.certFile != "" {
		if req.EKCert, err = os.ReadFile(f.certFile); err != nil {
			return req, usageError(fmt.Errorf("--ek-cert: %w", err))
		}
	}
	return req, nil
}

func (a *app) tpmIdentityCmd() *cobra.Command {
	var ek ekFlags
	c := &cobra.Command{
		Use:   "identity [--ek-ca BUNDLE] [--ek-cert FILE] [--trust-on-first-use]",
		Short: "Establish who the TPM is: its EK certificate verified, its SRK authenticated through the EK",
		Long: `Establish the TPM's identity as a first contact must, trusting nothing that
arrives over the TPM bus until it is authenticated:

  1. the EK certificate is read from NV (RSA 2048 0x01c00002, else ECC P-256
     0x01c0000a, else ECC P-384 0x01c00016), or from --ek-cert for a TPM that
     keeps none or to choose another of its EKs;
  2. it is verified against the manufacturer certificates in --ek-ca (roots and
     issuing CAs, PEM); without them, or when they do not vouch for it, the TPM is
     refused (exit 15) unless --trust-on-first-use is given, and then the output
     says so;
  3. the EK's public key is taken from the certificate, never from the TPM; the
     TPM's EK (persistent at 0x81010001, 0x81010002 or 0x81010016, else
     created from the TCG template) must be that key (exit 15 otherwise);
  4. a session is salted to that key, and the SRK is created through it, so the
     TPM's response HMAC, keyed by a salt only the certified EK can decrypt,
     authenticates the SRK's public area. A TPM (or something on the bus) whose
     EK is not the certified key fails here (exit 15).

The SRK name shown is the authenticated one; "persistent" says whether
0x81000001 holds that SRK. Nothing is written to the TPM (a TPM without a
persistent EK gets a transient one, flushed after).`,
		Example: `  provd --tpm sim tpm identity --ek-ca /var/lib/provd/swtpm/ca/issuercert.pem
  provd tpm identity --ek-ca /etc/provd/ek-roots.pem -o json
  provd tpm identity --ek-cert ek.der --trust-on-first-use`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := ek.request()
			if err != nil {
				return err
			}
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				id, err := ag.TPMIdentity(cmd.Context(), req)
				if err != nil {
					return err
				}
				return a.emit(id, func(w io.Writer) { printIdentity(w, id) })
			})
		},
	}
	ek.add(a, c)
	return c
}

func printIdentity(w io.Writer, id api.Identity) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// The certificate's names are the manufacturer's, or on first use
	// anyone's (review 53: control characters in a subject).
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%s\n", k, printable(fmt.Sprint(v))) }
	trust := "verified: the EK certificate chains to a trusted manufacturer"
	if id.Trust == api.TrustOnFirstUse {
		trust = "TRUST ON FIRST USE: no manufacturer vouched for the EK certificate"
	}
	row("Trust", trust)
	row("EK certificate", fmt.Sprintf("%s (%s), sha256 %s", id.EKCertSource, id.EKKey, id.EKCertSHA256))
	row("Subject", id.Subject)
	row("Issuer", id.Issuer)
	if len(id.Chain) > 0 {
		row("Chain", strings.Join(id.Chain, " <- "))
	}
	if id.Manufacturer != "" {
		row("TPM", fmt.Sprintf("manufacturer %s, model %s, version %s", id.Manufacturer, id.Model, id.Version))
	}
	row("SRK name (authenticated)", id.SRKName)
	persistent := "yes"
	if !id.SRKPersistent {
		persistent = "no"
	}
	row("Persistent at 0x81000001", persistent+" (as ReadPublic says: not authenticated)")
	tw.Flush()
}
