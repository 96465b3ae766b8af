package fwhook

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"syscall"

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

// EventTagID is the taggedEventID of provd's events (EV_EVENT_TAG,
// TCG_PCClientTaggedEvent): "PVDF".
const EventTagID = 0x50564446

// failedMeasurement is what a failed verification extends, in every bank
// its hash: one fixed value whatever failed, so that the PCR's "failed"
// state is one known value and never the good one.
var failedMeasurement = []byte("provd firmware verification failed\x00")

// maxCommitSteps bounds one commit: each step is a TPM2_NV_Increment (2
// commands, milliseconds on a real TPM). Versions are security version
// numbers, raised by the releases that must not be rolled back.
const maxCommitSteps = 1 << 16

// VerifyRequest is one run of the hook.
type VerifyRequest struct {
	Manifest []byte // the manifest file's bytes
	Root     string // the image root
	PCR      int
	LogPath  string // the measurement log (<state-dir>/measurements.log)
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
	res := Result{PCR: r.PCR, Log: r.LogPath}
	s, verr := verdict(t, r, &res)
	banks, err := t.PCRBanks()
	if err != nil {
		return res, errors.Join(verr, err)
	}
	ev, err := event(banks, s, verr)
	if err != nil {
		return res, errors.Join(verr, err)
	}
	if res.PCRValues, err = measure(t, r.PCR, r.LogPath, ev); err != nil {
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

// verdict is every check, in the order of the exit codes' documentation:
// anchor, signature and signer, class, images, version.
func verdict(t *tpm.TPM, r VerifyRequest, res *Result) (*firmware.Signed, error) {
	in, err := Read(t)
	if err != nil {
		return nil, err
	}
	res.Lowest, res.OwnerAuthSet = in.Lowest, in.OwnerAuthSet
	s, err := firmware.Parse(r.Manifest)
	if err != nil {
		return nil, err
	}
	res.Class, res.Version = s.Manifest.Class, s.Manifest.Version
	res.ManifestSHA256, res.Signer = hex.EncodeToString(s.Digest()), hex.EncodeToString(s.SignerName)
	if err := s.SignedBy(in.Current, in.Next); err != nil {
		return nil, err
	}
	if s.Manifest.Class != in.Class {
		return nil, fmt.Errorf("%w: the manifest is for class %q, this device is %q", firmware.ErrBadSignature, s.Manifest.Class, in.Class)
	}
	if err := s.Manifest.VerifyImages(r.Root); err != nil {
		return nil, err
	}
	if s.Manifest.Version < in.Lowest {
		return nil, fmt.Errorf("%w: version %d, the counter accepts %d and above", firmware.ErrRollback, s.Manifest.Version, in.Lowest)
	}
	return s, nil
}

// event is the TCG_PCR_EVENT2 of a verdict, with a digest for each bank.
func event(banks []tpm2.TPMIAlgHash, s *firmware.Signed, verr error) (attest.Event, error) {
	ev := attest.Event{PCR: 0, Type: attest.EVEventTag}
	var text string
	if verr == nil {
		text = fmt.Sprintf("provd firmware verified: class %s, version %d, manifest sha256:%x", s.Manifest.Class, s.Manifest.Version, s.Digest())
	} else {
		text = "provd firmware verification failed: " + failureKind(verr)
	}
	ev.Data = taggedEvent(text)
	for _, b := range banks {
		h, err := b.Hash()
		if err != nil || !h.Available() {
			return attest.Event{}, fmt.Errorf("PCR bank 0x%04x: %w", uint16(b), tpm.ErrUnsupported)
		}
		var d []byte
		if verr == nil {
			d = s.DigestFor(h)
		} else {
			hh := h.New()
			hh.Write(failedMeasurement)
			d = hh.Sum(nil)
		}
		ev.Digests = append(ev.Digests, tpm2.TPMTHA{HashAlg: b, Digest: d})
	}
	return ev, nil
}

// failureKind names a failure for the event's text: which check failed,
// never a secret (errors carry none).
func failureKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{firmware.ErrNoAnchor, "no anchor"},
		{firmware.ErrAnchorUntrusted, "anchor untrusted"},
		{firmware.ErrBadSignature, "signature"},
		{firmware.ErrBadManifest, "manifest malformed"},
		{firmware.ErrDigest, "image digest"},
		{firmware.ErrMissingImage, "image missing"},
		{firmware.ErrRollback, "rollback"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "TPM or I/O error"
}

// taggedEvent is a TCG_PCClientTaggedEvent: taggedEventID,
// taggedEventDataSize, then the text.
func taggedEvent(text string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, EventTagID)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(text)))
	return append(b, text...)
}

// EventText is the text of one of provd's tagged events, or "" when e is
// not one.
func EventText(e attest.Event) string {
	if e.Type != attest.EVEventTag || len(e.Data) < 8 || binary.LittleEndian.Uint32(e.Data) != EventTagID ||
		int(binary.LittleEndian.Uint32(e.Data[4:])) != len(e.Data)-8 {
		return ""
	}
	return string(e.Data[8:])
}

// measure extends pcr with ev's digests and appends ev to the log at path.
// A PCR at its reset value in every bank means a new boot: the log starts
// afresh. Otherwise the event is appended to the log there (a log that
// does not parse, or whose banks differ, is replaced: fw log --replay then
// shows that it no longer accounts for the PCR). The extend comes first:
// the PCR is the truth, the log its description. It returns the PCR's
// values after the extend.
func measure(t *tpm.TPM, pcr int, path string, ev attest.Event) (map[string]string, error) {
	fresh := true
	for _, d := range ev.Digests {
		v, err := t.PCRRead(d.HashAlg, []int{pcr})
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(v[pcr], make([]byte, len(d.Digest))) {
			fresh = false
		}
	}
	ev.PCR = pcr
	if err := t.PCRExtendAll(pcr, ev.Digests); err != nil {
		return nil, err
	}
	var banks []tpm2.TPMIAlgHash
	for _, d := range ev.Digests {
		banks = append(banks, d.HashAlg)
	}
	var log *attest.EventLog
	if !fresh {
		if b, err := readLog(path); err == nil {
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
	if err := log.AppendEvent(ev); err != nil {
		return nil, err
	}
	b, err := log.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := store.WriteFile(path, b, 0o644); err != nil {
		return nil, err
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

// readLog reads an event log file, at most attest.MaxEventLogSize bytes.
func readLog(path string) ([]byte, error) {
	return readRegular(path, attest.MaxEventLogSize)
}

// readRegular reads the regular file at path, at most limit bytes, without
// following a symbolic link at its last component and without blocking: a
// FIFO, a device or a link planted at the hook's paths is refused, not read
// (a FIFO would hang the boot).
func readRegular(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
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
	b, err := readLog(path)
	if err != nil {
		return nil, err
	}
	return attest.ParseEventLog(b)
}
