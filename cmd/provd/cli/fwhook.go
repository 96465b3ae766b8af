package cli

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/spf13/cobra"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// anchorJSON is fw anchor set|show's -o json form.
type anchorJSON struct {
	Officer       string `json:"officer"`
	Class         string `json:"class"`
	Signer        string `json:"signer"`
	Next          string `json:"next_signer,omitempty"`
	Base          uint64 `json:"counter_base"`
	Counter       uint64 `json:"counter"`
	Lowest        uint64 `json:"lowest_version"`
	OwnerAuthSet  bool   `json:"owner_auth_set"`
	Authenticated bool   `json:"authenticated"`
}

func (a *app) emitAnchor(in fwhook.Info, verb string) error {
	j := anchorJSON{Officer: hex.EncodeToString(in.Officer), Class: in.Class, Signer: hex.EncodeToString(in.Current),
		Next: hex.EncodeToString(in.Next), Base: in.Base, Counter: in.Counter, Lowest: in.Lowest,
		OwnerAuthSet: in.OwnerAuthSet, Authenticated: in.Authenticated}
	if !in.OwnerAuthSet {
		fmt.Fprintln(a.deps.Stderr, "provd: warning: the owner hierarchy has no authorization value: a process with TPM access can undefine the anchor and define its own (docs/firmware.md)")
	}
	return a.emit(j, func(w io.Writer) {
		fmt.Fprintf(w, "%s firmware anchor 0x%08x\nclass:          %s\nsigner:         %s\n", verb, uint32(fwhook.AnchorHandle), j.Class, j.Signer)
		if j.Next != "" {
			fmt.Fprintf(w, "next signer:    %s\n", j.Next)
		}
		fmt.Fprintf(w, "officer:        %s\nlowest version: %d (counter 0x%08x at %d, base %d)\nowner auth set: %v\n",
			j.Officer, j.Lowest, uint32(fwhook.CounterHandle), j.Counter, j.Base, j.OwnerAuthSet)
	})
}

func (a *app) fwAnchorCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "anchor",
		Short: "The firmware signer anchored in TPM NV, and the anti-rollback counter",
	}
	var pubFile, nextFile, class, officerFile, ownerAuthFile string
	var lowest uint64
	var ek ekFlags
	set := &cobra.Command{
		Use:   "set --pubkey signer.pub.pem [--next next.pub.pem] --class C --officer officer.pem --ek-ca BUNDLE [--lowest-version N] [--owner-auth-file FILE]",
		Short: "Anchor the firmware signer in the TPM (crypto officer)",
		Long: `Write the firmware signer's TPM name, the next signer's during a rotation, and the
device class into the anchor, NV index 0x01707603, and define the anti-rollback
counter, 0x01707604, where it is missing.

The TPM is authenticated first, as provd tpm identity does (--ek-ca, default
$PROVD_EK_CA: its EK certificate verified, the SRK created through a session
salted to the certified EK), and the whole set runs in sessions salted to that
SRK: nothing on the bus can change what the officer signs.

The anchor is written only through TPM2_PolicySigned by the crypto officer's key
(--officer, the private half of provision --officer-key): the officer signs this
one write (the TPM's nonce and the write's cpHash), so neither an edit of a file
nor another local process, nor a replay of the signature, can change it. A device
that was never provisioned can hold an anchor.

The counter's value, less the base recorded in the anchor, is the lowest firmware
version the device accepts; provd fw verify --commit raises it. Its write
authorization is kept root-only in <state-dir>/fw-commit.auth.

Rotation: set --pubkey CURRENT --next NEXT; devices accept both; once the fleet
runs firmware signed by NEXT, set --pubkey NEXT. A set keeps the lowest accepted
version, or raises it to --lowest-version; it never lowers it. When the previous
anchor is gone or not provd's (another process removed it), or names another
officer than --officer (a copy with an officer of its own, or the officer key
replaced), the lowest version is unknown and --lowest-version is required: an
attacker who removes or replaces the anchor gets no rollback from the
officer's next set.

--owner-auth-file gives the owner hierarchy's authorization value (the file's
bytes, one trailing newline dropped) when the device maker set one: only then can
no process without it undefine the anchor and define its own. Without one, provd
warns.`,
		Example: `  provd fw anchor set --pubkey fw-signer.pub.pem --class gateway --officer officer.pem
  provd fw anchor set --pubkey fw-signer.pub.pem --next fw-signer-2027.pub.pem --class gateway --officer officer.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pubFile == "" || class == "" || officerFile == "" {
				return usageError(errors.New("--pubkey, --class and --officer are required"))
			}
			req := fwhook.SetRequest{Class: class}
			if cmd.Flags().Changed("lowest-version") {
				req.Lowest = &lowest
			}
			var err error
			if req.Signer, err = readSignerPub(pubFile); err != nil {
				return err
			}
			if nextFile != "" {
				if req.Next, err = readSignerPub(nextFile); err != nil {
					return err
				}
			}
			if req.Officer, err = readSigner(officerFile); err != nil {
				return err
			}
			if ownerAuthFile != "" {
				b, err := os.ReadFile(ownerAuthFile)
				if err != nil {
					return usageError(err)
				}
				req.OwnerAuth = bytes.TrimSuffix(b, []byte("\n"))
				defer clear(b)
			}
			dir, err := a.fwStateDir()
			if err != nil {
				return err
			}
			req.CommitAuthPath = filepath.Join(dir, fwhook.CommitAuthName)
			idReq, err := ek.request()
			if err != nil {
				return err
			}
			t, done, err := a.openTPM(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			// The TPM authenticated first (found by review: an interposer
			// forged the counter's value and the officer signed a floor of
			// 0): every read and write of the set then runs in sessions
			// salted to the SRK the certified EK vouched for.
			id, srk, err := agent.Establish(t, idReq, time.Now)
			if err != nil {
				return err
			}
			if err := agent.PinEstablished(t, id, srk); err != nil {
				return err
			}
			in, err := fwhook.Set(t, req)
			if err != nil {
				return err
			}
			return a.emitAnchor(in, "set")
		},
	}
	set.Flags().StringVar(&pubFile, "pubkey", "", "the firmware signer's public key (PEM)")
	set.Flags().StringVar(&nextFile, "next", "", "the next firmware signer's public key (PEM), during a rotation")
	set.Flags().StringVar(&class, "class", "", "the device class (as fw sign --class)")
	set.Flags().StringVar(&officerFile, "officer", "", "the crypto officer's private approval key (PEM)")
	set.Flags().StringVar(&ownerAuthFile, "owner-auth-file", "", "the owner hierarchy's authorization value, when it has one")
	ek.add(a, set)
	set.Flags().Uint64Var(&lowest, "lowest-version", 0, "the lowest firmware version to accept from now on (never below the current one; required when the previous anchor is gone or names another officer)")
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the anchored firmware signer and the lowest accepted version",
		Long: `Read the anchor and the counter from the TPM and check that both are the indices
provd defines (exit 22 when another process replaced one, 21 when none is set).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, done, err := a.openTPM(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			in, err := fwhook.Read(t)
			if err != nil {
				return err
			}
			return a.emitAnchor(in, "the")
		},
	}
	c.AddCommand(set, show)
	return c
}

// fwStateDir is the state directory, made (root-only) when missing: the
// hook runs on devices never provisioned.
func (a *app) fwStateDir() (string, error) {
	// Made and checked as the store makes it (review 66: MkdirAll, as
	// root, followed whatever link was on the way).
	return store.MakeStateDir(a.stateDir)
}

func (a *app) fwVerifyCmd() *cobra.Command {
	var manifest, root string
	var pcr int
	var commit bool
	c := &cobra.Command{
		Use:   "verify --manifest M [--root DIR] [--pcr 12] [--commit]",
		Short: "Authenticate the firmware images at boot and measure the verdict into a PCR",
		Long: `The boot hook (systemd/provd-fw-verify.service), in-process, with nothing of
provd's state but the TPM's anchor and counter:

  1. read the anchor and the counter from the TPM (exit 21 none, 22 not provd's);
  2. verify the manifest's signature, its signer against the anchor and its class
     (exit 17);
  3. each image's size and digest, in one streaming pass (exit 18 changed, 19
     missing);
  4. the version against the counter (exit 20 rolled back);

then extend the PCR (--pcr, default 12; one of 8..15) in every active bank with
the anchor's measurement (its officer and class) and the manifest's digest (the
bank's hash of the signed payload), and append the TCG_PCR_EVENT2s to
<state-dir>/measurements.log. On any failure it extends a fixed "verification
failed" measurement instead, so keys sealed to the good value stay locked, and
exits with the failure's code. A TPM failure is exit 9 (6 when no TPM answers).

--commit, after a good verification, raises the counter so that this version
becomes the lowest accepted; it never lowers it.`,
		Example: `  provd fw verify --manifest /boot/fw.manifest --root /boot/firmware --commit`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manifest == "" {
				return usageError(errors.New("--manifest is required"))
			}
			if err := fwhook.CheckPCR(pcr); err != nil {
				return usageError(fmt.Errorf("--pcr: %w", err))
			}
			// Made and checked as the store makes it, before the hook
			// writes its log there (review 67: a missing state's path,
			// cleaned, put the log beside the state the store then made).
			// One that cannot be made or trusted still has the verdict
			// measured, with no log and no commit, and is then reported
			// (review 68: returning first left PCR 12 unmeasured).
			dir, dirErr := a.fwStateDir()
			logPath, authPath := "", ""
			if dirErr == nil {
				logPath, authPath = filepath.Join(dir, fwhook.LogName), filepath.Join(dir, fwhook.CommitAuthName)
			}
			// The TPM first, then everything else inside the hook: a
			// manifest that cannot be read is a measured failure too
			// (found by review: a missing manifest left the PCR as it was).
			// Without the full self-test, as every open but the daemon's
			// (docs/threat-model.md, "Self-tests"): the TPM tests what the
			// hook uses before its first use, and the hook runs on the
			// boot's critical path.
			t, done, err := a.openTPM(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			res, err := fwhook.VerifyContext(cmd.Context(), t, fwhook.VerifyRequest{ManifestPath: manifest, Root: root, PCR: pcr,
				LogPath: logPath, Commit: commit && dirErr == nil, CommitAuthPath: authPath})
			if dirErr != nil {
				err = errors.Join(fmt.Errorf("the state directory: %w", dirErr), err)
			}
			if err != nil {
				var te *tpm.Error
				if ExitCode(err) == api.ExitError && errors.As(err, &te) {
					err = &codedError{code: api.ExitTPMFailure, err: err}
				}
				if a.output == "json" {
					_ = a.emit(res, nil)
				}
				return err
			}
			return a.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "firmware verified: class %s, version %d, manifest sha256 %s\nPCR %d extended: %s\n", res.Class, res.Version, res.ManifestSHA256, res.PCR, pcrLine(res.PCRValues))
				if res.Committed {
					fmt.Fprintf(w, "committed: the lowest accepted version is now %d\n", res.Lowest)
				}
			})
		},
	}
	c.Flags().StringVar(&manifest, "manifest", "", "the signed firmware manifest")
	c.Flags().StringVar(&root, "root", ".", "the directory the manifest's image names are under")
	c.Flags().IntVar(&pcr, "pcr", fwhook.DefaultPCR, "the PCR to extend")
	c.Flags().BoolVar(&commit, "commit", false, "after a good verification, raise the anti-rollback counter to this version")
	return c
}

func pcrLine(v map[string]string) string {
	var parts []string
	for bank, val := range v {
		parts = append(parts, bank+":"+val)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// eventJSON is one event of fw log -o json.
type eventJSON struct {
	PCR     int               `json:"pcr"`
	Type    string            `json:"type"`
	Digests map[string]string `json:"digests"`
	Text    string            `json:"text,omitempty"`
	Data    string            `json:"data,omitempty"`
}

func (a *app) fwLogCmd() *cobra.Command {
	var logFile string
	var replay bool
	var pcr int
	c := &cobra.Command{
		Use:   "log [--log FILE] [--replay] [--pcr 12]",
		Short: "Print a TCG event log (provd's measurements, or the firmware's) and replay it against the PCRs",
		Long: `Print the events of a TCG PC Client crypto-agile event log: provd's
<state-dir>/measurements.log by default, or --log FILE, such as the kernel's
firmware log /sys/kernel/security/tpm0/binary_bios_measurements (the same parser
reads both). provd's own events are checked against their digests (a text that
says "verified" over the failed measurement is exit 14); the digests, not the
text, are what the PCR vouches for. --replay recomputes every PCR the log
extends, in each bank both the log and the TPM have, and compares with the TPM:
exit 14 names the PCRs that differ (something extended them without a logged
event, or the log was edited).`,
		Example: `  provd fw log --replay
  provd fw log --log /sys/kernel/security/tpm0/binary_bios_measurements --replay -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := fwhook.CheckPCR(pcr); err != nil {
				return usageError(fmt.Errorf("--pcr: %w", err))
			}
			// provd's own log always answers for the hook's PCR, even
			// when it has no event there (found by review: a log that
			// left PCR 12 out replayed clean after a failed boot).
			hookPCR := -1
			if logFile == "" || cmd.Flags().Changed("pcr") {
				hookPCR = pcr
			}
			dir, err := a.resolvedStateDir()
			if err != nil {
				return err
			}
			provdLog := filepath.Join(dir, fwhook.LogName)
			if logFile == "" {
				logFile = provdLog
			}
			l, err := fwhook.ReadLogFile(logFile)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("%w: %v", api.ErrNotFound, err)
				}
				return usageError(err)
			}
			// provd's log named by --log, or any log with a provd event in
			// it, answers for the hook's PCR too (found by review 49: the
			// state's own log given by its path, with PCR 12 left out,
			// replayed clean after a failed boot).
			ours := sameFile(logFile, provdLog) || slices.ContainsFunc(l.Events, func(e attest.Event) bool { return attest.ProvdEventText(e) != "" })
			if hookPCR < 0 && ours {
				hookPCR = pcr
			}
			out := struct {
				Log      string        `json:"log"`
				Events   []eventJSON   `json:"events"`
				Replayed []replayedPCR `json:"replayed,omitempty"`
				Match    *bool         `json:"match,omitempty"`
			}{Log: logFile, Events: []eventJSON{}}
			var lies []string
			for i, e := range l.Events {
				if err := attest.CheckProvdEvent(e); err != nil {
					lies = append(lies, fmt.Sprintf("event %d: %v", i, err))
				} else if attest.ProvdEventText(e) != "" && e.PCR != pcr {
					lies = append(lies, fmt.Sprintf("event %d: a provd verdict in PCR %d, the hook's is %d", i, e.PCR, pcr))
				} else if ours && attest.ProvdEventText(e) == "" {
					// provd's log holds the hook's verdicts only, as the
					// fleet endpoint holds it to (review 69: the failed
					// verdict retyped, or its tag changed, with its
					// digests kept, hid the failure behind a hand-made
					// "verified" and replayed clean).
					lies = append(lies, fmt.Sprintf("event %d: not a verdict of provd's, in provd's measurement log (it holds the hook's verdicts only)", i))
				}
			}
			for _, e := range l.Events {
				j := eventJSON{PCR: e.PCR, Type: e.Type.String(), Digests: map[string]string{}, Text: attest.ProvdEventText(e)}
				if j.Text == "" {
					j.Data = hex.EncodeToString(e.Data)
				}
				for _, d := range e.Digests {
					j.Digests[catalog.HashName(d.HashAlg)] = hex.EncodeToString(d.Digest)
				}
				out.Events = append(out.Events, j)
			}
			var cmpErr error
			if len(lies) > 0 {
				cmpErr = fmt.Errorf("%w: the log's text does not match its digests: %s", api.ErrTampered, strings.Join(lies, "; "))
			}
			if replay && cmpErr == nil {
				t, done, err := a.openTPM(cmd.Context())
				if err != nil {
					return err
				}
				defer done()
				out.Replayed, cmpErr = replayAgainstTPM(t, l, hookPCR)
				if cmpErr != nil && !errors.Is(cmpErr, api.ErrTampered) {
					return cmpErr
				}
				match := cmpErr == nil
				out.Match = &match
			}
			if err := a.emit(out, func(w io.Writer) {
				for _, e := range out.Events {
					desc := e.Text
					if desc == "" {
						desc = shortHex(e.Data)
					} else {
						desc = printable(desc) // never a terminal's control characters raw (reviews 49, 51)
					}
					fmt.Fprintf(w, "PCR %-2d %-34s %s  %s\n", e.PCR, e.Type, shortHex(e.Digests["sha256"]), desc)
				}
				if replay && cmpErr == nil {
					fmt.Fprintf(w, "replayed: the log accounts for every PCR it extends (%d values)\n", len(out.Replayed))
				}
			}); err != nil {
				return err
			}
			return cmpErr
		},
	}
	c.Flags().StringVar(&logFile, "log", "", "the event log (default <state-dir>/measurements.log)")
	c.Flags().BoolVar(&replay, "replay", false, "replay the log and compare with the TPM's PCRs")
	c.Flags().IntVar(&pcr, "pcr", fwhook.DefaultPCR, "the hook's PCR: provd's verdicts must be there, and provd's log always answers for it")
	return c
}

// sameFile reports whether paths a and b name one existing file.
func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func shortHex(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// replayedPCR is one PCR value a log replays to, as fw log -o json shows it.
type replayedPCR struct {
	Bank  string `json:"bank"`
	PCR   int    `json:"pcr"`
	Value string `json:"value"`
	Match bool   `json:"match"`
}

// replayAgainstTPM replays l and compares every PCR it extends, and
// alwaysPCR when >= 0, in every bank the TPM has active, with the TPM's
// value: a log that lacks an active bank is refused (found by review: a
// SHA-1-only log said "verified" over a failed boot's SHA-256 value). It
// returns the replayed values compared; a mismatch is api.ErrTampered
// naming them.
func replayAgainstTPM(t *tpm.TPM, l *attest.EventLog, alwaysPCR int) ([]replayedPCR, error) {
	vals, err := l.Replay(attest.Options{AllowSHA1: true})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrTampered, err)
	}
	banks, err := t.PCRBanks()
	if err != nil {
		return nil, err
	}
	for _, b := range banks {
		if _, ok := vals[b]; !ok {
			return nil, fmt.Errorf("%w: the log has no %s bank, which the TPM has active: it accounts for nothing there", api.ErrTampered, catalog.HashName(b))
		}
	}
	for b := range vals {
		if !slices.Contains(banks, b) {
			// Checked against nothing, its digests could say anything
			// (found by review 49: a SHA-256 "verified" event beside the
			// SHA-1 failed one a SHA-1-only TPM holds replayed clean).
			return nil, fmt.Errorf("%w: the log has a %s bank, which the TPM does not have active: nothing vouches for it", api.ErrTampered, catalog.HashName(b))
		}
	}
	touched := map[int]bool{}
	if alwaysPCR >= 0 {
		touched[alwaysPCR] = true
	}
	for _, e := range l.Events {
		if e.Type != attest.EVNoAction {
			touched[e.PCR] = true
		}
	}
	var pcrs []int
	for i := range touched {
		pcrs = append(pcrs, i)
	}
	sort.Ints(pcrs)
	var out []replayedPCR
	var diffs []string
	for _, b := range banks {
		rep, ok := vals[b]
		if !ok || len(pcrs) == 0 {
			continue
		}
		got, err := t.PCRRead(b, pcrs)
		if err != nil {
			return nil, err
		}
		for _, i := range pcrs {
			match := bytes.Equal(got[i], rep[i])
			out = append(out, replayedPCR{Bank: catalog.HashName(b), PCR: i, Value: hex.EncodeToString(rep[i]), Match: match})
			if !match {
				diffs = append(diffs, fmt.Sprintf("%s PCR %d is %x, the log replays to %x", catalog.HashName(b), i, got[i], rep[i]))
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: the log has no bank the TPM has (%v)", api.ErrTampered, banksOf(banks))
	}
	if len(diffs) > 0 {
		return out, fmt.Errorf("%w: the log does not account for the PCRs: %s", api.ErrTampered, strings.Join(diffs, "; "))
	}
	return out, nil
}

func banksOf(b []tpm2.TPMIAlgHash) []string {
	var s []string
	for _, x := range b {
		s = append(s, catalog.HashName(x))
	}
	return s
}
