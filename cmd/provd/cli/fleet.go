package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/agent/tpmkey"
	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/internal/pemblock"
	"github.com/provd/provd/internal/safefile"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
)

// attestState is what provd attest enroll leaves for attest now, in the
// state directory (not secret).
type attestState struct {
	Endpoint string `json:"endpoint"`
	DeviceID string `json:"device_id"`
	Class    string `json:"class"`
}

const attestStateFile = "attest.json"

// endpointFlags are how a command reaches the fleet endpoint.
type endpointFlags struct {
	url, caCert, tokenFile string
}

func (f *endpointFlags) add(a *app, c *cobra.Command, operator bool) {
	c.Flags().StringVar(&f.url, "endpoint", a.deps.Getenv("PROVD_FLEET"), "the fleet endpoint, https://HOST:PORT (env PROVD_FLEET)")
	c.Flags().StringVar(&f.caCert, "ca-cert", a.deps.Getenv("PROVD_FLEET_CA"), "the endpoint's certificate (PEM) to pin, e.g. <state-dir>/fleet/tls.crt of fleet serve (env PROVD_FLEET_CA)")
	if operator {
		c.Flags().StringVar(&f.tokenFile, "token-file", a.deps.Getenv("PROVD_FLEET_TOKEN_FILE"), "a file holding an operator token (env PROVD_FLEET_TOKEN_FILE)")
	}
}

func (f *endpointFlags) client() (*fleetapi.Client, error) {
	if f.url == "" {
		return nil, usageError(errors.New("--endpoint is required"))
	}
	var ca []byte
	if f.caCert != "" {
		var err error
		if ca, err = os.ReadFile(f.caCert); err != nil {
			return nil, usageError(err)
		}
	}
	var token string
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, usageError(err)
		}
		token = strings.TrimSpace(string(b))
	}
	c, err := fleetapi.NewClient(f.url, ca, token)
	if err != nil {
		return nil, usageError(err)
	}
	return c, nil
}

func (a *app) attestCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "attest",
		Short: "Enroll with a fleet endpoint and attest this device to it (docs/attestation.md)",
	}
	var ef endpointFlags
	var class string
	enroll := &cobra.Command{
		Use:   "enroll --endpoint URL [--ca-cert PEM] --class C",
		Short: "Enroll this TPM: its EK certificates and a new attestation key, proven to live with the EK",
		Long: `Send the TPM's EK certificates and the public area of an attestation key (AK: a
restricted signing key born in this TPM under the SRK the state pins) to the
fleet endpoint. The endpoint verifies the EK certificate against the
manufacturers' roots and answers with a credential to that EK for the AK's name;
this TPM activates it (only the TPM holding that EK, with this AK loaded, can) and
the secret goes back: the endpoint then registers the device, its ID the SHA-256
of the EK's public area. Needs a provisioned state (a pinned TPM identity).`,
		Example: `  provd attest enroll --endpoint https://fleet.example:8443 --ca-cert fleet-ca.pem --class gateway`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if class == "" {
				return usageError(errors.New("--class is required"))
			}
			cl, err := ef.client()
			if err != nil {
				return err
			}
			var dev fleetapi.Device
			err = a.withAgent(cmd.Context(), func(ag api.Service) error {
				req, err := ag.AttestIdentity(cmd.Context())
				if err != nil {
					return err
				}
				req.Class = class
				e, err := cl.Enroll(cmd.Context(), req)
				if err != nil {
					return err
				}
				act, err := ag.AttestActivate(cmd.Context(), e)
				if err != nil {
					return err
				}
				defer act.Wipe()
				if dev, err = cl.Activate(cmd.Context(), fleetapi.ActivateRequest{DeviceID: e.DeviceID, Secret: act.Secret}); err != nil {
					return err
				}
				b, _ := json.MarshalIndent(attestState{Endpoint: ef.url, DeviceID: dev.DeviceID, Class: class}, "", "  ")
				dir, err := a.resolvedStateDir()
				if err != nil {
					return err
				}
				return store.WriteFile(filepath.Join(dir, attestStateFile), append(b, '\n'), 0o600)
			})
			if err != nil {
				return err
			}
			return a.emit(dev, func(w io.Writer) {
				fmt.Fprintf(w, "enrolled: device %s, class %s, %s\n", printable(dev.DeviceID), printable(dev.Class), printable(dev.State))
			})
		},
	}
	ef.add(a, enroll, false)
	enroll.Flags().StringVar(&class, "class", "", "the device class (its policy at the endpoint)")

	var nf endpointFlags
	var fwLog, measLog string
	now := &cobra.Command{
		Use:   "now [--endpoint URL] [--ca-cert PEM] [--firmware-log FILE]",
		Short: "Attest now: a quote over the endpoint's nonce, with the event logs; print the verdict",
		Long: `Fetch a single-use nonce from the fleet endpoint, quote the PCRs it asks for with
the attestation key (TPM2_Quote), and send the quote, the PCR values, the
firmware's event log (/sys/kernel/security/tpm0/binary_bios_measurements when
present, or --firmware-log) and provd's measurement log (<state-dir>/
measurements.log, the boot hook's). Prints the verdict and its reasons; exit 23
when it did not pass. The endpoint and device ID are those of attest enroll
unless given.`,
		Example: `  provd attest now
  provd attest now -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.attestOnce(cmd, &nf, fwLog, measLog, attestNow)
		},
	}
	nf.add(a, now, false)
	now.Flags().StringVar(&fwLog, "firmware-log", "", "the firmware's TCG event log (default "+defaultFirmwareLog+" when present)")
	now.Flags().StringVar(&measLog, "measurement-log", "", "provd's measurement log (default <state-dir>/measurements.log)")
	var ff endpointFlags
	var ffw, fmeas string
	fetch := &cobra.Command{
		Use:   "fetch [--endpoint URL] [--ca-cert PEM]",
		Short: "Attest, and install the secrets the endpoint delivers after a pass, sealed to this TPM",
		Long: `Attest as provd attest now does and ask for this device's deliveries: after a
passing appraisal the endpoint seals each secret of the device's class to this
TPM (a sealed data object in an outer duplication wrapper to its EK, usable only
while the PCRs hold the values it just appraised, and only to be unsealed).
TPM2_Import under the EK opens it (on any other TPM it fails); the blob the TPM
returns, wrapped under the EK, is kept in the state. provd attest secret NAME
unseals one.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.attestOnce(cmd, &ff, ffw, fmeas, attestFetch)
		},
	}
	ff.add(a, fetch, false)
	fetch.Flags().StringVar(&ffw, "firmware-log", "", "the firmware's TCG event log (default "+defaultFirmwareLog+" when present)")
	fetch.Flags().StringVar(&fmeas, "measurement-log", "", "provd's measurement log (default <state-dir>/measurements.log)")
	var out string
	secret := &cobra.Command{
		Use:   "secret NAME [--out FILE]",
		Short: "Unseal a secret the fleet endpoint delivered (attest fetch)",
		Long: `Unseal a delivered secret: loaded under the EK, unsealed in a session that
encrypts the answer, while the PCRs hold the values of the appraisal that
delivered it (exit 3 otherwise).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.AttestSecretResult
			if err := a.withAgent(cmd.Context(), func(ag api.Service) (err error) {
				res, err = ag.AttestSecret(cmd.Context(), api.AttestSecretRequest{Name: args[0]})
				return err
			}); err != nil {
				return err
			}
			defer res.Wipe()
			v := res.Secret
			if err := writeOut(a, out, v, 0o600, store.Durable); err != nil {
				return err
			}
			if out == "-" {
				return nil
			}
			return a.emit(map[string]any{"out": out, "bytes": len(v)}, func(w io.Writer) {
				fmt.Fprintf(w, "unsealed %d bytes to %s\n", len(v), out)
			})
		},
	}
	secret.Flags().StringVar(&out, "out", "-", "where to write it (- for stdout)")
	var sin, sout, shash string
	sign := &cobra.Command{
		Use:   "sign NAME --in FILE [--out SIG] [--hash sha256|sha384]",
		Short: "Sign with a key the fleet endpoint delivered (attest fetch)",
		Long: `Sign FILE (hashed here with --hash, default sha256; give sha384 for a P-384
key) with a key the endpoint delivered after a passing attestation: loaded under
the EK and used in a policy session that needs the PCR values of the appraisal
that delivered it and provd's attestation key, for TPM2_Sign only (exit 3 after a
change of those PCRs). ECDSA signatures are ASN.1 DER, RSA the raw octets
(RSASSA-PKCS1-v1_5), as openssl dgst -verify takes them. Without --out the
signature is printed in hex.`,
		Example: `  provd attest sign fleet-tls --in csr-body.bin --out csr-body.sig`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if sin == "" {
				return usageError(errors.New("--in is required"))
			}
			h, err := api.ParseHash(shash)
			if err != nil {
				return err
			}
			data, err := readIn(a, sin)
			if err != nil {
				return err
			}
			hh := h.New()
			hh.Write(data)
			digest := hh.Sum(nil)
			var sig []byte
			if err := a.withAgent(cmd.Context(), func(ag api.Service) (err error) {
				sig, err = ag.AttestSign(cmd.Context(), args[0], digest, api.SignOptions{Hash: h})
				return err
			}); err != nil {
				return err
			}
			if sout != "" {
				if err := writeOut(a, sout, sig, 0o644, store.Remakeable); err != nil {
					return err
				}
				if sout == "-" {
					return nil
				}
			}
			res := map[string]any{"key": args[0], "signature_hex": hex.EncodeToString(sig)}
			if sout != "" {
				res["out"] = sout
			}
			return a.emit(res, func(w io.Writer) {
				if sout != "" {
					fmt.Fprintf(w, "signature (%d bytes) written to %s\n", len(sig), sout)
					return
				}
				fmt.Fprintln(w, hex.EncodeToString(sig))
			})
		},
	}
	sign.Flags().StringVar(&sin, "in", "", "the file to sign (- for stdin)")
	sign.Flags().StringVar(&sout, "out", "", "where to write the signature (- for stdout)")
	sign.Flags().StringVar(&shash, "hash", "sha256", "sha256 or sha384")

	var pf endpointFlags
	var pfw, pmeas string
	peer := &cobra.Command{
		Use:   "peer [--endpoint URL] [--ca-cert PEM]",
		Short: "Register this device's transfer key with the endpoint, so that it approves duplications to it",
		Long: `Attest as provd attest now does, with this device's peer identity (provd peer
identity: its transfer key, bound to its PK) riding in the quote: the quote's
qualifying data covers the file, so the AK vouches for it. After a pass against
golden values an operator set, the endpoint answers with a credential to the EK
this device enrolled for the transfer key's name; this TPM activates it (as provd
peer prove does) and the answer goes back: the endpoint then holds the transfer
key as this device's, proven resident, and approves duplications to it
(provd fleet approve) while the device keeps attesting.`,
		Example: `  provd attest peer
  provd attest peer -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.attestOnce(cmd, &pf, pfw, pmeas, attestPeer)
		},
	}
	pf.add(a, peer, false)
	peer.Flags().StringVar(&pfw, "firmware-log", "", "the firmware's TCG event log (default "+defaultFirmwareLog+" when present)")
	peer.Flags().StringVar(&pmeas, "measurement-log", "", "provd's measurement log (default <state-dir>/measurements.log)")
	c.AddCommand(enroll, now, fetch, secret, sign, peer)
	return c
}

// attestMode is what an attestation is for.
type attestMode int

const (
	attestNow   attestMode = iota // the verdict only
	attestFetch                   // and the secrets delivered after a pass
	attestPeer                    // and the transfer key registered after a pass
)

// attestOnce is attest now, fetch and peer: a challenge, a quote, the
// logs, the verdict; for fetch, the secrets delivered after a pass are
// installed; for peer, the quote vouches for this device's peer identity
// and the endpoint's residency challenge is answered after a pass.
func (a *app) attestOnce(cmd *cobra.Command, ef *endpointFlags, fwLog, measLog string, mode attestMode) error {
	fetch := mode == attestFetch
	dir, err := a.resolvedStateDir()
	if err != nil {
		return err
	}
	var st attestState
	if b, err := safefile.ReadFile(filepath.Join(dir, attestStateFile), 64<<10); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Errorf("%w: %s: %v", api.ErrTampered, attestStateFile, err)
		}
	}
	if st.DeviceID == "" {
		return fmt.Errorf("%w: this device is not enrolled (provd attest enroll)", api.ErrNotFound)
	}
	if ef.url == "" {
		ef.url = st.Endpoint
	}
	cl, err := ef.client()
	if err != nil {
		return err
	}
	req := fleetapi.AttestRequest{DeviceID: st.DeviceID}
	if fwLog == "" {
		if _, err := os.Stat(defaultFirmwareLog); err == nil {
			fwLog = defaultFirmwareLog
		}
	}
	if fwLog != "" {
		if req.FirmwareLog, err = readBounded(fwLog, attest.MaxEventLogSize); err != nil {
			return err
		}
	}
	read := readBounded // a log the operator names
	if measLog == "" {
		// The state's own: read as the state's files are (review 67: a
		// FIFO planted there hung attest now, or fed it its bytes).
		measLog = filepath.Join(dir, fwhook.LogName)
		read = func(path string, limit int64) ([]byte, error) {
			b, err := safefile.ReadFile(path, limit)
			if errors.Is(err, safefile.ErrUnsafe) {
				return nil, fmt.Errorf("%w: %w", api.ErrTampered, err)
			}
			return b, err
		}
	}
	if b, err := read(measLog, attest.MaxEventLogSize); err == nil {
		req.MeasurementLog = b
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ch, err := cl.Challenge(cmd.Context(), fleetapi.ChallengeRequest{DeviceID: st.DeviceID})
	var ae *fleetapi.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity {
		// The endpoint refuses to challenge this device (revoked,
		// not activated): no attestation can pass.
		return fmt.Errorf("%w: %w", api.ErrAttestationFailed, err)
	}
	if err != nil {
		return err
	}
	req.Nonce = ch.Nonce
	// One agent for the quote, the endpoint's appraisal and the record:
	// one open of the TPM (GetTestResult, the handle scans, the SRK's
	// check: 4 commands) where there were two (issue 14). The TPM stays
	// open across the endpoint's round trip; the state directory's lock
	// is taken only inside each operation. In this process the operations
	// share one session (inOneSession): the record's anchor read and
	// gate proof go in the quote's (2 commands fewer).
	var v fleetapi.Verdict
	var installed []string
	var failed map[string]string
	var reg *fleetapi.PeerRegistration
	if err := a.withAgent(cmd.Context(), func(ag api.Service) error {
		return inOneSession(ag, func() error {
			qualifying := ch.Nonce
			if mode == attestPeer {
				pi, err := ag.PeerIdentity(cmd.Context())
				if err != nil {
					return err
				}
				if req.Peer, err = json.MarshalIndent(pi, "", "  "); err != nil {
					return err
				}
				qualifying = fleetapi.PeerQualifying(ch.Nonce, req.Peer)
			}
			q, err := ag.AttestQuote(cmd.Context(), api.AttestQuoteRequest{Nonce: qualifying, PCRs: ch.PCRs})
			if err != nil {
				return err
			}
			req.Quote, req.Signature, req.PCRs = q.Quote, q.Signature, q.PCRs
			req.Fetch = fetch
			if v, err = cl.Attest(cmd.Context(), req); err != nil {
				return err
			}
			if _, err := ag.AttestRecord(cmd.Context(), api.AttestVerdict{Endpoint: ef.url, DeviceID: v.DeviceID, AppraisalID: v.AppraisalID,
				Pass: v.Pass, Reasons: v.Reasons, At: v.At}); err != nil {
				return err
			}
			if fetch && v.Pass && len(v.Deliveries) > 0 {
				res, err := ag.AttestInstall(cmd.Context(), api.AttestInstallRequest{Deliveries: v.Deliveries})
				installed, failed = res.Installed, res.Failed
				return err
			}
			if mode == attestPeer && v.Pass && v.PeerChallenge != nil {
				pc := v.PeerChallenge
				proof, err := ag.PeerProve(cmd.Context(), api.PeerChallenge{Format: api.ChallengeFormat, ParentName: pc.ParentName,
					EKCertSHA256: pc.EKCertSHA256, CredentialBlob: pc.CredentialBlob, CredentialSecret: pc.CredentialSecret})
				if err != nil {
					return err
				}
				r, err := cl.ProvePeer(cmd.Context(), fleetapi.PeerProveRequest{DeviceID: v.DeviceID, Peer: req.Peer, ExpiresAt: pc.ExpiresAt, Answer: proof.Answer})
				if err != nil {
					return err
				}
				reg = &r
			}
			return nil
		})
	}); err != nil {
		return err
	}
	if err := a.emit(v, func(w io.Writer) {
		verdict := "PASS"
		if !v.Pass {
			verdict = "FAIL"
		}
		// The endpoint's words: printed so that none draws a line of
		// its own (review 55).
		fmt.Fprintf(w, "%s: device %s, appraisal %s\n", verdict, printable(v.DeviceID), printable(v.AppraisalID))
		for _, r := range v.Reasons {
			fmt.Fprintf(w, "  %s\n", printable(r.String()))
		}
		for _, n := range installed {
			fmt.Fprintf(w, "installed %s (sealed to this TPM and the PCR values that passed)\n", printable(n))
		}
		if len(installed) > 0 {
			fmt.Fprintln(w, "use them with provd attest secret NAME, or provd attest sign NAME for a key")
		}
		for _, n := range slices.Sorted(maps.Keys(failed)) {
			fmt.Fprintf(w, "NOT installed %s: %s\n", printable(n), printable(failed[n]))
		}
		if reg != nil {
			fmt.Fprintf(w, "registered transfer key %s (PK %s) with the endpoint: it approves duplications to it while this device attests\n", printable(reg.ParentName), printable(reg.PKName))
		}
	}); err != nil {
		return err
	}
	if !v.Pass {
		return fmt.Errorf("%w: %s", api.ErrAttestationFailed, v.Reasons[0].String())
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %d of %d deliveries not installed (the others are)", api.ErrBadInput, len(failed), len(failed)+len(installed))
	}
	if mode == attestPeer && reg == nil {
		for _, r := range v.Reasons {
			if r.Code == fleetapi.CodePeerRefused {
				return fmt.Errorf("%w: the endpoint did not take the transfer key: %s", api.ErrNotPermitted, r.Detail)
			}
		}
		return fmt.Errorf("%w: the endpoint sent no residency challenge", api.ErrNotPermitted)
	}
	return nil
}

const defaultFirmwareLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, usageError(fmt.Errorf("%s: more than %d bytes", path, limit))
	}
	return b, nil
}

func (a *app) fleetCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "fleet",
		Short: "The fleet attestation endpoint: serve it, and operate it (docs/attestation.md)",
	}
	var listen, db, ekCA, tokenFile, authorityKey string
	serve := &cobra.Command{
		Use:   "serve --listen ADDR [--db URL] --ek-ca BUNDLE [--operator-token-file FILE]",
		Short: "Serve the fleet endpoint: enrollment, challenges, appraisals, the operators' API",
		Long: `Serve the fleet attestation endpoint over HTTPS (TLS 1.3). Devices enroll by EK
certificate (verified against --ek-ca) and AK activation, fetch single-use nonces
and send quotes and event logs, which are appraised against their class's policy
(golden PCR values, allowed firmware manifests; a class without one takes its
first verified quote as baseline, marked trust on first use).

--db is sqlite:///path (default sqlite://<state-dir>/fleet/fleet.db) or
postgres://... for replicas sharing one database. The TLS certificate is
<state-dir>/fleet/tls.crt (self-signed, made on first start for localhost, the
host name and --listen's host; devices pin it with --ca-cert), its key beside it.
Operators authenticate with bearer tokens: the lines of --operator-token-file, or
one made on first start in <state-dir>/fleet/operator.token.

With --authority-key NAME the endpoint is the fleet's duplication authority: it
signs, with that key of this host's provd (in its TPM, never exported), the
approval of a key's duplication to a device's transfer key, only for a device
that registered it (provd attest peer) and attests (provd fleet approve).`,
		Example: `  provd fleet serve --listen :8443 --ek-ca ek-roots.pem
  provd fleet serve --listen :8443 --db postgres://fleet@db/fleet --ek-ca ek-roots.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" || ekCA == "" {
				return usageError(errors.New("--listen and --ek-ca are required"))
			}
			if a.deps.Server == nil {
				return a.handOff(cmd)
			}
			state, err := store.MakeStateDir(a.stateDir)
			if err != nil {
				return err
			}
			dir, err := store.MakeStateDir(filepath.Join(state, "fleet"))
			if err != nil {
				return err
			}
			bundle, err := os.ReadFile(ekCA)
			if err != nil {
				return usageError(err)
			}
			roots, err := attest.CertPoolFromPEM(bundle)
			if err != nil {
				return usageError(fmt.Errorf("--ek-ca: %w", err))
			}
			if db == "" {
				db = "sqlite://" + filepath.Join(dir, "fleet.db")
			}
			tokens, err := operatorTokens(dir, tokenFile)
			if err != nil {
				return err
			}
			cert, err := fleetTLS(dir, listen)
			if err != nil {
				return err
			}
			if authorityKey == "" {
				return a.serveFleet(cmd, listen, dir, FleetConfig{DB: db, Roots: roots, Operators: tokens, Certificate: cert})
			}
			// The authority key is a provd key of this host, in its TPM:
			// every approval is one signature through an agent in this
			// process, which holds the state's serve lock while it serves.
			// Never through a daemon: the daemon signs with any key for every
			// member of the provd group (found by review: any of them was
			// then the fleet's duplication authority).
			// The serve lock, for as long as the endpoint serves: no
			// daemon starts on this state meanwhile (found by review: a
			// check at start alone was skipped with --tpm, and missed a
			// daemon started later by socket activation).
			release, err := store.HoldServeLock(a.stateDir)
			if err != nil {
				return fmt.Errorf("%w: %w: a provd daemon serving this state would sign with the authority key for every member of its group; serve the endpoint where this state's provd runs no daemon (docs/attestation.md)", api.ErrNotPermitted, err)
			}
			defer release()
			if client.Answers(cmd.Context(), a.socket) {
				return fmt.Errorf("%w: a provd daemon answers on %s: it would sign with the authority key for every member of its group; serve the endpoint where this state's provd runs no daemon (docs/attestation.md)", api.ErrNotPermitted, a.socket)
			}
			return a.withLocalAgent(cmd.Context(), func(ag api.Service) error {
				k, err := tpmkey.New(cmd.Context(), ag, authorityKey)
				if err != nil {
					return err
				}
				if info := k.Info(); info.Extractable || info.Kind != api.KindCreated {
					return fmt.Errorf("%w: --authority-key %s is %s (extractable: %v): the fleet's duplication authority must be born in this TPM and never leave it (provd key create NAME --type ecc-p256)", api.ErrNotPermitted, authorityKey, info.Kind, info.Extractable)
				}
				if st, err := ag.Status(cmd.Context()); err != nil {
					return err
				} else if st.Movable != "" {
					return fmt.Errorf("%w: this host's PK is movable (%s): the authority key would move with it", api.ErrNotPermitted, st.Movable)
				}
				if _, ok := k.Public().(*ecdsa.PublicKey); !ok {
					return usageError(fmt.Errorf("--authority-key %s: want an ECC signing key (provd key create %s --type ecc-p256)", authorityKey, authorityKey))
				}
				return a.serveFleet(cmd, listen, dir, FleetConfig{DB: db, Roots: roots, Operators: tokens, Certificate: cert, Authority: k})
			})
		},
	}
	serve.Flags().StringVar(&listen, "listen", "", "address to listen on, HOST:PORT")
	serve.Flags().StringVar(&db, "db", "", "sqlite:///PATH or postgres://... (default sqlite://<state-dir>/fleet/fleet.db)")
	serve.Flags().StringVar(&ekCA, "ek-ca", a.deps.Getenv("PROVD_EK_CA"), "PEM bundle of the TPM manufacturers' certificates (env PROVD_EK_CA)")
	serve.Flags().StringVar(&tokenFile, "operator-token-file", "", "operator tokens, one per line (default: one made in <state-dir>/fleet/operator.token)")
	serve.Flags().StringVar(&authorityKey, "authority-key", "", "a non-extractable ECC sign key of this host's provd (provd key create NAME --type ecc-p256): the endpoint signs duplication approvals with it (provd fleet approve)")

	var af endpointFlags
	var authOut string
	authority := &cobra.Command{
		Use:   "authority [--out FILE]",
		Short: "Print the endpoint's duplication authority key (PEM): create keys --duplicable-by it",
		Long: `Fetch the public key the endpoint signs duplication approvals with (fleet serve
--authority-key). Keys created with provd key create --duplicable-by this file, and
PKs provisioned --duplicable-by it, move only to devices the endpoint approves.`,
		Example: `  provd fleet authority --out fleet-authority.pem
  provd key create db-key --type ecc-p256 --extractable --duplicable-by fleet-authority.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := af.client()
			if err != nil {
				return err
			}
			res, err := cl.Authority(cmd.Context())
			if err != nil {
				return err
			}
			// The endpoint's answer is written only as the key it must be,
			// encoded again: nothing else of it reaches a file or a
			// terminal (review 55: written raw to stdout).
			key, err := policy.ParsePublicKeyPEM([]byte(res.PublicKey))
			if err != nil {
				return fmt.Errorf("the endpoint answered an authority key that is not a public key provd takes: %v", err)
			}
			pemKey, err := policy.MarshalPublicKeyPEM(key)
			if err != nil {
				return err
			}
			if err := writeOut(a, authOut, pemKey, 0o644, store.Durable); err != nil {
				return err
			}
			if authOut == "-" {
				return nil
			}
			return a.emit(map[string]string{"out": authOut}, func(w io.Writer) { fmt.Fprintf(w, "authority key: %s\n", authOut) })
		},
	}
	af.add(a, authority, false)
	authority.Flags().StringVar(&authOut, "out", "-", "where to write it (- for stdout)")

	var apf endpointFlags
	var objectName, approvalOut, peerOut string
	approve := &cobra.Command{
		Use:   "approve DEVICE --object-name HEX --out APPROVAL --peer-out PEER",
		Short: "Have the endpoint approve a key's duplication to a device that attests (operator)",
		Long: `Ask the endpoint, the fleet's duplication authority (fleet serve --authority-key),
to approve the duplication of one key (its TPM name: provd key pub NAME -o json on
the sender; a movable PK's name to move the PK) to DEVICE's transfer key. The
endpoint signs only when DEVICE registered its transfer key (provd attest peer),
proven resident in the TPM it enrolled, and its last attestation passed, within
the approval window (one hour), against golden values an operator set and the
class's current policy. The approval is for the PK policy DEVICE registered.

Writes the approval (--out) and DEVICE's peer identity file (--peer-out, naming
only its enrolled EK certificate) for the sender:
  provd dup export KEY --to PEER --approval APPROVAL --ek-ca BUNDLE
and prints the PK name enrolled for DEVICE (--peer-pk for a PK's move).`,
		Example: `  provd fleet approve 3f5a…e1 --object-name 000b9c… --out approval.json --peer-out peer.json`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if objectName == "" || approvalOut == "" || peerOut == "" {
				return usageError(errors.New("--object-name, --out and --peer-out are required"))
			}
			cl, err := apf.client()
			if err != nil {
				return err
			}
			res, err := cl.ApproveDuplication(cmd.Context(), args[0], fleetapi.DupApprovalRequest{ObjectName: objectName})
			if err != nil {
				return err
			}
			// The endpoint's answer is written only as what it must be,
			// parsed and encoded again (review 56: written raw, to stdout
			// with "-").
			var ap policy.Approval
			if err := ap.UnmarshalJSON(res.Approval); err != nil {
				return fmt.Errorf("the endpoint answered an approval provd does not take: %w", err)
			}
			peer, err := api.ParsePeerIdentity(res.Peer)
			if err != nil {
				return fmt.Errorf("the endpoint answered a peer file provd does not take: %w", err)
			}
			apJSON, err := ap.MarshalJSON()
			if err != nil {
				return err
			}
			peerJSON, err := json.Marshal(peer)
			if err != nil {
				return err
			}
			if err := writeOut(a, approvalOut, append(apJSON, '\n'), 0o644, store.Durable); err != nil {
				return err
			}
			if err := writeOut(a, peerOut, append(peerJSON, '\n'), 0o644, store.Durable); err != nil {
				return err
			}
			out := map[string]string{"device_id": res.DeviceID, "object_name": res.ObjectName, "pk_name": res.PKName, "approval": approvalOut, "peer": peerOut}
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "approved key %s to device %s: %s (peer file %s; its PK %s)\n", printable(res.ObjectName), printable(res.DeviceID), approvalOut, peerOut, printable(res.PKName))
			})
		},
	}
	apf.add(a, approve, true)
	approve.Flags().StringVar(&objectName, "object-name", "", "the key's TPM name, hex (provd key pub NAME -o json on the sender)")
	approve.Flags().StringVar(&approvalOut, "out", "", "where to write the approval")
	approve.Flags().StringVar(&peerOut, "peer-out", "", "where to write the device's peer identity file")

	var of endpointFlags
	devices := &cobra.Command{
		Use:   "devices",
		Short: "List the fleet's devices and their last verdicts (operator)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := of.client()
			if err != nil {
				return err
			}
			ds, err := cl.Devices(cmd.Context())
			if err != nil {
				return err
			}
			return a.emit(ds, func(w io.Writer) {
				for _, d := range ds {
					fmt.Fprintf(w, "%s  %-10s %-9s %s\n", printable(d.DeviceID), printable(d.Class), printable(d.State), printable(d.LastVerdict))
				}
			})
		},
	}
	of.add(a, devices, true)
	device := &cobra.Command{Use: "device", Short: "One device (operator)"}
	var sf endpointFlags
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a device and its appraisal history",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := sf.client()
			if err != nil {
				return err
			}
			d, err := cl.Device(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			h, err := cl.Appraisals(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			res := struct {
				fleetapi.Device
				Appraisals []fleetapi.Verdict `json:"appraisals"`
			}{d, h}
			return a.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "device %s, class %s, %s\n", printable(d.DeviceID), printable(d.Class), printable(d.State))
				for _, v := range h {
					fmt.Fprintf(w, "  %s pass=%v\n", v.At.Format(time.RFC3339), v.Pass)
					for _, r := range v.Reasons {
						fmt.Fprintf(w, "    %s\n", printable(r.String()))
					}
				}
			})
		},
	}
	sf.add(a, show, true)
	var rf endpointFlags
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a device: its attestations fail from now on",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := rf.client()
			if err != nil {
				return err
			}
			d, err := cl.Revoke(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(d, func(w io.Writer) { fmt.Fprintf(w, "device %s: %s\n", d.DeviceID, d.State) })
		},
	}
	rf.add(a, revoke, true)
	device.AddCommand(show, revoke)

	pol := &cobra.Command{Use: "policy", Short: "A device class's golden values (operator)"}
	var pf endpointFlags
	var pclass, pcrFile string
	var manifests, pkPolicies []string
	set := &cobra.Command{
		Use:   "set --class C [--pcr-values FILE] [--manifest SHA256]...",
		Short: "Set a class's golden PCR values and allowed firmware manifests",
		Long: `Set the policy devices of --class are appraised against: --pcr-values, a golden
PCR file as provd tpm pcr read -o json writes it, and --manifest, the
manifest_sha256 of each firmware release the boot hook may have verified (as fw
manifest show prints it). A class without a policy takes its first verified
quote as baseline (trust on first use). --pk-policy names the PK policy digest
(provd status's policy_digest on a known-good device) the class's devices may
register their transfer keys under (provd attest peer): the endpoint, as the
duplication authority, signs approvals over those digests only. Without
--pk-policy the class keeps the ones it has; --pk-policy none removes them.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pclass == "" {
				return usageError(errors.New("--class is required"))
			}
			p := fleetapi.Policy{Class: pclass, PCRs: map[string]map[string]string{}, Manifests: manifests, PKPolicies: pkPolicies}
			if len(pkPolicies) == 1 && pkPolicies[0] == "none" {
				p.PKPolicies = nil
			}
			if pcrFile != "" {
				b, err := os.ReadFile(pcrFile)
				if err != nil {
					return usageError(err)
				}
				v, err := policy.ParsePCRValues(b)
				if err != nil {
					return usageError(fmt.Errorf("--pcr-values: %w", err))
				}
				m := map[string]string{}
				for i, d := range v.Values {
					m[fmt.Sprint(i)] = hex.EncodeToString(d)
				}
				p.PCRs[v.Bank.String()] = m
			}
			cl, err := pf.client()
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("pk-policy") {
				// New golden values keep the class's PK policies (found
				// by review: a policy set without them silently stopped
				// every duplication approval).
				cur, err := cl.Policy(cmd.Context(), pclass)
				var ae *fleetapi.APIError
				switch {
				case err == nil:
					p.PKPolicies = cur.PKPolicies
				case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
				default:
					return err
				}
			}
			got, err := cl.SetPolicy(cmd.Context(), p)
			if err != nil {
				return err
			}
			return a.emit(got, func(w io.Writer) { fmt.Fprintf(w, "policy of class %s set\n", got.Class) })
		},
	}
	pf.add(a, set, true)
	set.Flags().StringVar(&pclass, "class", "", "the device class")
	set.Flags().StringVar(&pcrFile, "pcr-values", "", "golden PCR values (provd tpm pcr read -o json)")
	set.Flags().StringArrayVar(&manifests, "manifest", nil, "an allowed firmware manifest's manifest_sha256 (repeatable)")
	set.Flags().StringArrayVar(&pkPolicies, "pk-policy", nil, "a PK policy digest the class's devices may register for duplication approvals (provd status's policy_digest; repeatable)")
	var gf endpointFlags
	var gclass string
	get := &cobra.Command{
		Use:   "show --class C",
		Short: "Show a class's policy",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if gclass == "" {
				return usageError(errors.New("--class is required"))
			}
			cl, err := gf.client()
			if err != nil {
				return err
			}
			p, err := cl.Policy(cmd.Context(), gclass)
			if err != nil {
				return err
			}
			return a.emit(p, func(w io.Writer) {
				fmt.Fprintf(w, "class %s (trust on first use: %v)\n", p.Class, p.TOFU)
				for bank, vals := range p.PCRs {
					for i, v := range vals {
						fmt.Fprintf(w, "  %s:%s %s\n", bank, i, v)
					}
				}
				for _, m := range p.Manifests {
					fmt.Fprintf(w, "  manifest %s\n", m)
				}
			})
		},
	}
	gf.add(a, get, true)
	get.Flags().StringVar(&gclass, "class", "", "the device class")
	pol.AddCommand(set, get)

	sec := &cobra.Command{Use: "secret", Short: "Secrets delivered to a class's devices after a passing attestation (operator)"}
	var xf endpointFlags
	var xclass, xname, xin string
	put := &cobra.Command{
		Use:   "put --class C --name N --in FILE",
		Short: "Hand the endpoint a secret (1..128 bytes) for the devices of a class",
		Long: `Store a secret at the endpoint for the devices of --class: each device that passes
an attestation with provd attest fetch gets it sealed to its own TPM, bound to
the PCR values that passed. The endpoint keeps it in its database.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if xclass == "" || xname == "" || xin == "" {
				return usageError(errors.New("--class, --name and --in are required"))
			}
			v, err := readIn(a, xin)
			if err != nil {
				return err
			}
			defer clear(v)
			cl, err := xf.client()
			if err != nil {
				return err
			}
			info, err := cl.PutSecret(cmd.Context(), xclass, xname, fleetapi.KindSecret, v)
			if err != nil {
				return err
			}
			return a.emit(info, func(w io.Writer) { fmt.Fprintf(w, "secret %s of class %s stored\n", info.Name, info.Class) })
		},
	}
	xf.add(a, put, true)
	put.Flags().StringVar(&xclass, "class", "", "the device class")
	put.Flags().StringVar(&xname, "name", "", "the secret's name (1..32 of a-z, 0-9, '.', '_', '-')")
	put.Flags().StringVar(&xin, "in", "", "the secret (FILE, or - for stdin)")
	var lf endpointFlags
	var lclass string
	list := &cobra.Command{
		Use:   "list --class C",
		Short: "List a class's secrets and keys (names and kinds, a key's public part; never values)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := lf.client()
			if err != nil {
				return err
			}
			ls, err := cl.Secrets(cmd.Context(), lclass)
			if err != nil {
				return err
			}
			return a.emit(ls, func(w io.Writer) {
				for _, x := range ls {
					fmt.Fprintf(w, "%s  %-6s %s\n", x.Name, x.Kind, x.UpdatedAt.Format(time.RFC3339))
				}
			})
		},
	}
	lf.add(a, list, true)
	list.Flags().StringVar(&lclass, "class", "", "the device class")
	keyCmd := &cobra.Command{Use: "key", Short: "Keys delivered to a class's devices after a passing attestation (operator)"}
	var kf endpointFlags
	var kclass, kname, kin string
	kput := &cobra.Command{
		Use:   "put --class C --name N --in KEY.pem",
		Short: "Hand the endpoint a signing key for the devices of a class",
		Long: `Store a signing key at the endpoint for the devices of --class: a PKCS#8 private
key (PEM or DER), ECDSA P-256 or P-384, or RSA 2048 to 4096 bits. Each device that
passes an attestation with provd attest fetch gets it as a TPM key wrapped to its
own EK, usable only to sign (provd attest sign), only by provd, only while the
PCRs hold the values that passed. The endpoint keeps it in its database (as the
key's source; see docs/attestation.md). fleet secret list shows its public key.`,
		Example: `  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out fleet-tls.pem
  provd fleet key put --class gateway --name fleet-tls --in fleet-tls.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kclass == "" || kname == "" || kin == "" {
				return usageError(errors.New("--class, --name and --in are required"))
			}
			v, err := readIn(a, kin)
			if err != nil {
				return err
			}
			defer clear(v)
			der, err := pemblock.DER(v, "PRIVATE KEY")
			if err != nil {
				return usageError(fmt.Errorf("--in: %w (PKCS#8: openssl pkcs8 -topk8 -nocrypt)", err))
			}
			defer clear(der)
			if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
				return usageError(fmt.Errorf("--in: not a PKCS#8 private key (PEM PRIVATE KEY or DER): %v", err))
			}
			cl, err := kf.client()
			if err != nil {
				return err
			}
			info, err := cl.PutSecret(cmd.Context(), kclass, kname, fleetapi.KindKey, der)
			if err != nil {
				return err
			}
			return a.emit(info, func(w io.Writer) {
				fmt.Fprintf(w, "key %s of class %s stored\n%s", info.Name, info.Class, info.PublicKey)
			})
		},
	}
	kf.add(a, kput, true)
	kput.Flags().StringVar(&kclass, "class", "", "the device class")
	kput.Flags().StringVar(&kname, "name", "", "the key's name (1..32 of a-z, 0-9, '.', '_', '-'; one namespace with the class's secrets)")
	kput.Flags().StringVar(&kin, "in", "", "the private key, PKCS#8 PEM or DER (FILE, or - for stdin)")
	keyCmd.AddCommand(kput)
	var df endpointFlags
	var dclass, dname string
	del := &cobra.Command{
		Use:   "delete --class C --name N",
		Short: "Remove a class's secret or key from the endpoint: no device gets it from now on",
		Long: `Remove a secret or key the endpoint delivers to --class. Devices that installed
it keep it (it is in their TPM, bound to the PCR values that passed); replace a
key by putting a new one and rotating what trusts the old.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dclass == "" || dname == "" {
				return usageError(errors.New("--class and --name are required"))
			}
			cl, err := df.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteSecret(cmd.Context(), dclass, dname); err != nil {
				return err
			}
			return a.emit(map[string]string{"class": dclass, "name": dname}, func(w io.Writer) {
				fmt.Fprintf(w, "%s of class %s deleted\n", dname, dclass)
			})
		},
	}
	df.add(a, del, true)
	del.Flags().StringVar(&dclass, "class", "", "the device class")
	del.Flags().StringVar(&dname, "name", "", "the secret's or key's name")
	sec.AddCommand(put, list, del)
	c.AddCommand(serve, devices, device, pol, sec, keyCmd, authority, approve)
	return c
}

// serveFleet serves the endpoint until the command's context ends.
func (a *app) serveFleet(cmd *cobra.Command, listen, dir string, c FleetConfig) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	c.Log = slog.New(slog.NewJSONHandler(a.deps.Stderr, nil))
	c.Serving = func() {
		fmt.Fprintf(a.deps.Stderr, "provd fleet: serving https://%s (certificate %s)\n", ln.Addr(), filepath.Join(dir, "tls.crt"))
	}
	return a.deps.Server.ServeFleet(cmd.Context(), ln, c)
}

// operatorTokens reads the operators' tokens, making one in dir on first
// start when no file is given.
func operatorTokens(dir, file string) ([]string, error) {
	if file == "" {
		file = filepath.Join(dir, "operator.token")
		if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return nil, err
			}
			if err := store.WriteFile(file, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
				return nil, err
			}
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no operator token", file)
	}
	return out, nil
}

// fleetTLS loads the endpoint's certificate, making a self-signed one on
// first start.
func fleetTLS(dir, listen string) (tls.Certificate, error) {
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if c, err := tls.LoadX509KeyPair(crt, key); err == nil {
		return c, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "provd fleet endpoint"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		// A server certificate, not a CA (found by review: pinned as a
		// root, a CA certificate would let its key vouch for anything).
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	if h, err := os.Hostname(); err == nil && h != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, host)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return tls.Certificate{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return tls.Certificate{}, err
	}
	defer clear(kder)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	defer clear(keyPEM)
	if err := store.WriteFile(key, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := store.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(bytes.Clone(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), keyPEM)
}

// inOneSession runs fn, a sequence of ag's operations, in one shared TPM
// session when ag is an agent in this process (agent.Agent.Share; nothing
// else uses the connection meanwhile); through the daemon each request is
// its own.
func inOneSession(ag api.Service, fn func() error) error {
	if s, ok := ag.(interface{ Share(func() error) error }); ok {
		return s.Share(fn)
	}
	return fn()
}
