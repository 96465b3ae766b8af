package fwhook

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

var randReader io.Reader = rand.Reader

// DefaultPCR is the PCR the hook extends unless told otherwise: 12, which
// the TCG PC Client profile leaves to the operating system. (systemd-stub
// measures the kernel command line of a UKI into PCR 12 too: pick another
// PCR there; docs/firmware.md.)
const DefaultPCR = 12

// The files the hook keeps in the state directory.
const (
	LogName        = "measurements.log"
	CommitAuthName = "fw-commit.auth"
)

// maxCommitSteps bounds one commit: each step is a TPM2_NV_Increment (2
// commands, milliseconds on a real TPM). Versions are security version
// numbers, raised by the releases that must not be rolled back.
const maxCommitSteps = 1 << 16

// VerifyRequest is one run of the hook.
type VerifyRequest struct {
	// ManifestPath is the manifest file, read by Verify itself (a regular
	// file, no symbolic link at its last component, without blocking), so
	// that a manifest that cannot be read is a measured failure too;
	// Manifest, when ManifestPath is empty, is its bytes.
	ManifestPath string
	Manifest     []byte
	Root         string // the image root
	// PCR is 8..15: an operating-system PCR that no locality-0 command can
	// reset (16 and 23 can be reset by anyone, which would undo a failed
	// measurement).
	PCR     int
	LogPath string // the measurement log (<state-dir>/measurements.log)
	// Commit raises the counter to the manifest's version after a good
	// verification, with the authValue at CommitAuthPath.
	Commit         bool
	CommitAuthPath string
}

// Result is what the hook found and measured.
type Result struct {
	OK             bool              `json:"ok"`
	Class          string            `json:"class,omitempty"`
	Version        uint64            `json:"version"`
	ManifestSHA256 string            `json:"manifest_sha256,omitempty"`
	Signer         string            `json:"signer,omitempty"`
	Lowest         uint64            `json:"lowest_version"`
	Committed      bool              `json:"committed"`
	PCR            int               `json:"pcr"`
	PCRValues      map[string]string `json:"pcr_values"`
	Event          string            `json:"event"`
	Log            string            `json:"log"`
	OwnerAuthSet   bool              `json:"owner_auth_set"`
}

// Verify authenticates the images under r.Root against the manifest with
// the anchored signer and the counter, then measures the verdict: on
// success the manifest's digest (each active bank's hash of the signed
// payload), on any failure the fixed failed measurement, extended into
// r.PCR and appended to the log. The error is the first failure (its
// firmware sentinel decides the exit code); a failure to measure is
// joined to it.
func Verify(t *tpm.TPM, r VerifyRequest) (Result, error) {
	return VerifyContext(context.Background(), t, r)
}

// VerifyContext is Verify that ends when ctx does (the CLI's context ends
// at SIGTERM, which systemd sends at the unit's TimeoutStartSec): a
// hashing still under way is not waited for, and the failed measurement
// is extended before the process ends (found by review 49: an image whose
// read never answered held the hook, SIGKILL then left PCR 12 at its reset
// value, and root on that boot extended the good value by hand). A read
// left in flight then can only read on after a failed verdict.
func VerifyContext(ctx context.Context, t *tpm.TPM, r VerifyRequest) (Result, error) {
	res := Result{PCR: r.PCR, Log: r.LogPath}
	if err := CheckPCR(r.PCR); err != nil {
		return res, err
	}
	s, in, verr := verdict(ctx, t, r, &res)
	banks, err := t.PCRBanks()
	if err != nil {
		return res, errors.Join(verr, err)
	}
	evs, err := events(banks, in, s, verr)
	if err != nil {
		return res, errors.Join(verr, err)
	}
	if res.PCRValues, err = measure(t, r.PCR, r.LogPath, evs); err != nil {
		return res, errors.Join(verr, fmt.Errorf("measuring the verdict: %w", err))
	}
	res.Event = "verified"
	if verr != nil {
		res.Event = "failed"
		return res, verr
	}
	res.OK = true
	if r.Commit {
		if err := commit(t, r.CommitAuthPath, s.Manifest.Version, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// CheckPCR accepts the PCRs the hook extends: 8..15.
func CheckPCR(pcr int) error {
	if pcr < 8 || pcr > 15 {
		return fmt.Errorf("PCR %d: the hook extends one of 8..15 (0..7 are the firmware's; 16 and 23 are reset by anyone, 17..22 are not for locality 0)", pcr)
	}
	return nil
}

// verdict is every check, in the order of the exit codes' documentation:
// anchor (and counter), manifest (read, parsed, signature and signer,
// class), images, version. It returns the anchor it trusted, for the
// measurement.
//
// The images are hashed while the TPM reads the counter (issue 14: on a
// discrete TPM the counter's read, a policy session and an NV read, takes
// about as long as hashing the images, and the hook runs on every boot's
// critical path), and only those of a manifest whose signature Parse
// checked and whose signer and class the anchor accepts (found by review:
// hashed before the anchor was read, a manifest signed by anyone could
// hold the verdict on a stalled read). The verdict waits for the hashing,
// so nothing reads on after it, unless stop ends first (VerifyContext);
// the first failure in the order above is the one returned, as when the
// checks ran one after another.
func verdict(stop context.Context, t *tpm.TPM, r VerifyRequest, res *Result) (*firmware.Signed, *Info, error) {
	in, cx, err := readAnchor(t)
	if err != nil {
		return nil, nil, err
	}
	s, merr := readManifest(r)
	var serr error
	if merr == nil {
		serr = s.SignedBy(in.Current, in.Next)
		if serr == nil && s.Manifest.Class != in.Class {
			serr = fmt.Errorf("%w: the manifest is for class %q, this device is %q", firmware.ErrBadSignature, s.Manifest.Class, in.Class)
		}
	}
	ctx, cancel := context.WithCancel(stop)
	var images chan error
	if merr == nil && serr == nil {
		images = make(chan error, 1) // room for a send after a stop: never blocks
		// The channel is the goroutine's own argument: hashed sets images
		// to nil while it may still run (review 51: a race, and a send on
		// the nil channel that blocked for ever after a stop).
		go func(ch chan<- error) { ch <- verifyImages(ctx, s.Manifest, r.Root) }(images)
	}
	hashed := func() error {
		if images == nil {
			return nil
		}
		select {
		case err := <-images:
			images = nil
			return err
		case <-stop.Done():
			// Stopped: a read that never answers is not waited for.
			images = nil
			return fmt.Errorf("hashing the images: the hook was stopped before it ended: %w", stop.Err())
		}
	}
	defer func() {
		cancel()
		_ = hashed()
	}()
	if err := in.readCounter(t, cx); err != nil {
		return nil, nil, err
	}
	res.Lowest, res.OwnerAuthSet = in.Lowest, in.OwnerAuthSet
	if merr != nil {
		return nil, nil, merr
	}
	res.Class, res.Version = s.Manifest.Class, s.Manifest.Version
	res.ManifestSHA256, res.Signer = hex.EncodeToString(s.Digest()), hex.EncodeToString(s.SignerName)
	if serr != nil {
		return nil, nil, serr
	}
	if err := hashed(); err != nil {
		return nil, nil, err
	}
	if s.Manifest.Version < in.Lowest {
		return nil, nil, fmt.Errorf("%w: version %d, the counter accepts %d and above", firmware.ErrRollback, s.Manifest.Version, in.Lowest)
	}
	return s, &in, nil
}

// verifyImages is firmware.Manifest.VerifyImages; tests see which
// manifests are hashed.
var verifyImages = func(ctx context.Context, m firmware.Manifest, root string) error {
	return m.VerifyImages(ctx, root)
}

// readManifest reads (ManifestPath) and parses the request's manifest: a
// manifest that cannot be read is ErrBadManifest, measured as the others.
func readManifest(r VerifyRequest) (*firmware.Signed, error) {
	m := r.Manifest
	if r.ManifestPath != "" {
		var err error
		if m, err = readFile(r.ManifestPath, firmware.MaxManifest); err != nil {
			return nil, fmt.Errorf("%w: %v", firmware.ErrBadManifest, err)
		}
	}
	return firmware.Parse(m)
}

// events are the TCG_PCR_EVENT2s of a verdict, with a digest for each
// bank: on success the measurement of the anchor's officer and class and
// the manifest (attest.VerifiedMeasurement), on failure the failed
// measurement: one event, one extend, either way.
func events(banks []tpm2.TPMIAlgHash, in *Info, s *firmware.Signed, verr error) ([]attest.Event, error) {
	hashes := make([]crypto.Hash, len(banks))
	for i, b := range banks {
		h, err := b.Hash()
		if err != nil || !h.Available() {
			return nil, fmt.Errorf("PCR bank 0x%04x: %w", uint16(b), tpm.ErrUnsupported)
		}
		hashes[i] = h
	}
	ev := func(text string, digest func(h crypto.Hash) []byte) attest.Event {
		e := attest.Event{Type: attest.EVEventTag, Data: attest.TaggedEvent(text)}
		for i, b := range banks {
			e.Digests = append(e.Digests, tpm2.TPMTHA{HashAlg: b, Digest: digest(hashes[i])})
		}
		return e
	}
	if verr != nil {
		return []attest.Event{ev(attest.FailedText+failureKind(verr), func(h crypto.Hash) []byte { return attest.FailedMeasurement(h) })}, nil
	}
	return []attest.Event{ev(attest.VerifiedEventText(in.Officer, in.Class, s.Digest()), func(h crypto.Hash) []byte {
		return attest.VerifiedMeasurement(h, in.Officer, in.Class, s.DigestFor(h))
	})}, nil
}

// failureKind names a failure for the event's text: which check failed,
// never a secret (errors carry none).
func failureKind(err error) string {
	// attest.FailureKinds, in its order: the last is everything else.
	for i, e := range []error{firmware.ErrNoAnchor, firmware.ErrAnchorUntrusted, firmware.ErrBadSignature,
		firmware.ErrBadManifest, firmware.ErrDigest, firmware.ErrMissingImage, firmware.ErrRollback} {
		if errors.Is(err, e) {
			return attest.FailureKinds[i]
		}
	}
	return attest.FailureKinds[len(attest.FailureKinds)-1]
}

// measure extends pcr with each event's digests, in order, and appends
// the events to the log at path (its directory made root-only when
// missing). A PCR at its reset value in every bank means a new boot: the
// log starts afresh. Otherwise the events are appended to the log there (a
// log that does not parse, or whose banks differ, is replaced: fw log
// --replay then shows that it no longer accounts for the PCR). The extends
// come first: the PCR is the truth, the log its description. It returns
// the PCR's values after.
func measure(t *tpm.TPM, pcr int, path string, evs []attest.Event) (map[string]string, error) {
	var banks []tpm2.TPMIAlgHash
	for _, d := range evs[0].Digests {
		banks = append(banks, d.HashAlg)
	}
	fresh := true
	for _, b := range banks {
		v, err := t.PCRRead(b, []int{pcr})
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(v[pcr], make([]byte, len(v[pcr]))) {
			fresh = false
		}
	}
	for i := range evs {
		evs[i].PCR = pcr
		if err := t.PCRExtendAll(pcr, evs[i].Digests); err != nil {
			return nil, err
		}
	}
	var log *attest.EventLog
	if !fresh {
		if b, err := readFile(path, attest.MaxEventLogSize); err == nil {
			if l, err := attest.ParseEventLog(b); err == nil && slices.Equal(l.Banks(), banks) {
				log = l
			}
		}
	}
	if log == nil {
		var err error
		if log, err = attest.NewEventLog(banks...); err != nil {
			return nil, err
		}
	}
	for _, e := range evs {
		if err := log.AppendEvent(e); err != nil {
			return nil, err
		}
	}
	b, err := log.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if path != "" { // none: a state directory the CLI could not make or trust (the verdict measured all the same)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := store.WriteFile(path, b, 0o644); err != nil {
			return nil, err
		}
	}
	out := map[string]string{}
	for _, bank := range banks {
		v, err := t.PCRRead(bank, []int{pcr})
		if err != nil {
			return nil, err
		}
		out[catalog.HashName(bank)] = hex.EncodeToString(v[pcr])
	}
	return out, nil
}

// readFile reads the regular file at path, at most limit bytes, opened as
// the images are (firmware.OpenBeneath: no symbolic link at its last
// component, not a FIFO or device, without blocking): nothing planted at
// the hook's paths hangs the boot or is read in place of the file.
func readFile(path string, limit int64) ([]byte, error) {
	f, _, err := firmware.OpenBeneath(filepath.Dir(path), filepath.Base(path))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		clear(b)
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// commit raises the counter so that version is the lowest accepted: never
// down (a counter cannot go back).
func commit(t *tpm.TPM, authPath string, version uint64, res *Result) error {
	in, err := Read(t)
	if err != nil {
		return err
	}
	if version <= in.Lowest {
		res.Lowest = in.Lowest
		return nil
	}
	steps := version - in.Lowest
	if steps > maxCommitSteps {
		return fmt.Errorf("commit: version %d is %d above the lowest accepted (%d); one commit moves at most %d (versions are security version numbers)", version, steps, in.Lowest, maxCommitSteps)
	}
	auth, err := readCommitAuth(authPath)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: commit: the counter's authorization %s is missing (provd fw anchor set defines a new counter)", firmware.ErrAnchorUntrusted, authPath)
	}
	if err != nil {
		return err
	}
	defer clear(auth)
	x, err := t.ReadNVPublic(CounterHandle)
	if err != nil {
		return err
	}
	for range steps {
		if err := t.IncrementAuth(x, auth); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
	after, err := Read(t)
	if err != nil {
		return err
	}
	if after.Lowest != version {
		return fmt.Errorf("%w: commit: the counter accepts %d after the commit, want %d", firmware.ErrAnchorUntrusted, after.Lowest, version)
	}
	res.Lowest, res.Committed = after.Lowest, true
	return nil
}

// ReadLogFile reads and parses an event log file (provd's measurement
// log, or the kernel's binary_bios_measurements).
func ReadLogFile(path string) (*attest.EventLog, error) {
	b, err := readFile(path, attest.MaxEventLogSize)
	if err != nil {
		return nil, err
	}
	return attest.ParseEventLog(b)
}
