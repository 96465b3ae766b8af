package fleet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/policy"
)

// Reason is an appraisal's reason (fleetapi.Reason).
type Reason = fleetapi.Reason

// Reason codes (docs/attestation.md).
const (
	CodeDeviceUnknown    = "device_unknown"
	CodeNotActivated     = "device_not_activated"
	CodeRevoked          = "device_revoked"
	CodeNonceUnknown     = "nonce_unknown"
	CodeNonceExpired     = "nonce_expired"
	CodeQuoteSignature   = "quote_signature"
	CodeQuoteNonce       = "quote_nonce"
	CodeQuoteMalformed   = "quote_malformed"
	CodeQuoteUncovered   = "quote_pcrs_missing"
	CodePCRDigest        = "pcr_digest"
	CodeLogMalformed     = "log_malformed"
	CodeLogReplay        = "log_replay"
	CodeLogUnquoted      = "log_unquoted"
	CodeLogOverlap       = "log_overlap"
	CodeLogEvent         = "log_event"
	CodePCRPolicy        = "pcr_policy"
	CodeFirmwareFailed   = "firmware_failed"
	CodeFirmwareManifest = "firmware_manifest"
	CodeBaseline         = "baseline_tofu"
	// CodeWithheld notes a pass whose deliveries were withheld (not a
	// failure).
	CodeWithheld = "deliveries_withheld"
)

// coversBoot says whether golden values name a PCR that measures the boot
// and that no process can reset: 0..11 or 13..15 (found by review: a
// policy of PCR 12 and the resettable PCR 16 counted as covering the OS).
func coversBoot(vals map[int]string) bool {
	for i := range vals {
		if i >= 0 && i <= 15 && i != HookPCR {
			return true
		}
	}
	return false
}

// withhold says why a passing device gets no secrets, "" when it does: only
// against golden values an operator set (found by review: a trust-on-first-
// use pass delivered the class's secrets to whichever device attested first,
// whatever its boot), values that cover more than the boot hook's PCR (a
// manifests-only policy does not say which OS ran the hook, and an OS that
// skips it extends PCR 12's good value by hand: found by review), and
// SHA-256 values to bind the secret to.
func withhold(p *Policy, quoted map[string]map[int]string) string {
	switch {
	case p == nil || p.TOFU:
		return "the class's golden values are a trust-on-first-use baseline: secrets go only to devices appraised against values an operator set (provd fleet policy set)"
	case !coversBoot(p.PCRs["sha256"]):
		return "the class's policy names no SHA-256 golden value of a PCR that measures the boot (0..11, 13..15; not the hook's 12, not the resettable 16..23): it does not say which OS ran the hook; add the PCRs that measure it"
	case len(quoted["sha256"]) == 0:
		return "no SHA-256 PCR was quoted to bind the secrets to"
	}
	return ""
}

// ErrRejected is a request the endpoint refuses before any appraisal (a
// malformed enrollment, an untrusted EK): its message says why.
var ErrRejected = errors.New("fleet: rejected")

// Config is an endpoint's configuration.
type Config struct {
	Store Store
	// Roots and Intermediates are the EK manufacturers' certificates:
	// nothing else vouches for a device.
	Roots, Intermediates *x509.CertPool
	// NonceTTL is how long a challenge stays valid (default 2 minutes).
	NonceTTL time.Duration
	// DefaultPCRs are what a class without a policy quotes (default
	// sha256 0..9, 12 and 14: every PCR a PC Client firmware log extends,
	// the boot loader's and the kernel's EFI stub's (Linux measures the
	// initrd into PCR 9 through the firmware, so a real log always has
	// it), shim's MOK lists, and the boot hook's).
	DefaultPCRs map[string][]int
	Now         func() time.Time
	Rand        io.Reader
	// Authority signs duplication approvals (ApproveDuplication): the
	// key whose public part keys and movable PKs are born
	// --duplicable-by. None: the endpoint approves nothing.
	Authority crypto.Signer
	// ApprovalMaxAge is how recent a device's last passing attestation
	// must be for an approval to it (default 1 hour).
	ApprovalMaxAge time.Duration
}

// Endpoint is the fleet's appraisal logic over a store: stateless apart
// from the store, so replicas scale out behind any load balancer.
type Endpoint struct {
	cfg Config

	// aks are parsed AK public areas by their bytes (go-tpm's reflective
	// unmarshal was a tenth of an appraisal's CPU: issue 14), at most
	// maxAKCache, forgotten all at once when full.
	akMu sync.Mutex
	aks  map[string]tpm2.TPMTPublic

	keyMu sync.Mutex
	key   []byte // the nonce key, once read from the store
}

// New returns an endpoint.
func New(cfg Config) *Endpoint {
	if cfg.NonceTTL == 0 {
		cfg.NonceTTL = 2 * time.Minute
	}
	if cfg.DefaultPCRs == nil {
		cfg.DefaultPCRs = map[string][]int{"sha256": {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14}}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ApprovalMaxAge == 0 {
		cfg.ApprovalMaxAge = time.Hour
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	return &Endpoint{cfg: cfg}
}

func (e *Endpoint) now() time.Time { return e.cfg.Now().UTC() }

func rejected(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))
}

// Limits on what a device sends.
const (
	maxEKCerts    = 4
	maxEKCertSize = 16 << 10
)

// parsePublic reads a TPMT_PUBLIC strictly: it must marshal back to the
// same bytes.
func parsePublic(b []byte) (tpm2.TPMTPublic, error) {
	pub, err := unmarshalExact[tpm2.TPMTPublic](b)
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	return *pub, nil
}

// unmarshalExact reads a TPM structure that must marshal back to exactly
// b: no trailing bytes, no non-canonical encoding.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (*T, error) {
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, errors.New("trailing or non-canonical bytes")
	}
	return v, nil
}

const maxAKCache = 10000

// akPublic is parsePublic of a stored AK, from the cache when seen before
// (the bytes are the key: the same bytes parse the same).
func (e *Endpoint) akPublic(b []byte) (tpm2.TPMTPublic, error) {
	e.akMu.Lock()
	pub, ok := e.aks[string(b)]
	e.akMu.Unlock()
	if ok {
		return pub, nil
	}
	pub, err := parsePublic(b)
	if err != nil {
		return pub, err
	}
	e.akMu.Lock()
	if e.aks == nil || len(e.aks) >= maxAKCache {
		e.aks = map[string]tpm2.TPMTPublic{}
	}
	e.aks[string(b)] = pub
	e.akMu.Unlock()
	return pub, nil
}

// DeviceID is the ID of the TPM whose EK has public area ek: hex SHA-256 of
// its TPMT_PUBLIC.
func DeviceID(ek tpm2.TPMTPublic) string {
	sum := sha256.Sum256(tpm2.Marshal(ek))
	return hex.EncodeToString(sum[:])
}

// Enroll verifies a device's EK certificate against the manufacturers'
// roots and its AK's attributes, and answers with a credential to that EK
// for the AK's name (TPM2_MakeCredential in software): the device proves
// the AK lives with the EK by activating it (Activate). The device is kept
// pending until then.
func (e *Endpoint) Enroll(ctx context.Context, req fleetapi.EnrollRequest) (fleetapi.Enrollment, error) {
	if err := firmware.CheckClass(req.Class); err != nil {
		return fleetapi.Enrollment{}, rejected("class: %v", err)
	}
	ak, err := parsePublic(req.AKPublic)
	if err != nil {
		return fleetapi.Enrollment{}, rejected("AK public area: %v", err)
	}
	if err := attest.CheckAKPublic(ak); err != nil {
		return fleetapi.Enrollment{}, rejected("AK: %v", err)
	}
	if !ak.ObjectAttributes.FixedTPM || !ak.ObjectAttributes.FixedParent || !ak.ObjectAttributes.SensitiveDataOrigin {
		return fleetapi.Enrollment{}, rejected("AK: not born in the TPM and bound to it")
	}
	akName, err := tpm2.ObjectName(&ak)
	if err != nil {
		return fleetapi.Enrollment{}, rejected("AK name: %v", err)
	}
	if len(req.EKCertificates) == 0 || len(req.EKCertificates) > maxEKCerts {
		return fleetapi.Enrollment{}, rejected("%d EK certificates, want 1..%d", len(req.EKCertificates), maxEKCerts)
	}
	var ekPub tpm2.TPMTPublic
	var ekDER []byte
	var errs []error
	for _, der := range req.EKCertificates {
		if len(der) > maxEKCertSize {
			errs = append(errs, fmt.Errorf("an EK certificate of %d bytes", len(der)))
			continue
		}
		cert, err := attest.VerifyEKCertificate(der, attest.Options{Roots: e.cfg.Roots, Intermediates: e.cfg.Intermediates, Now: e.cfg.Now})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ekPub, err = attest.EKPublic(cert.PublicKey); err != nil {
			errs = append(errs, err)
			continue
		}
		ekDER = der
		break
	}
	if ekDER == nil {
		return fleetapi.Enrollment{}, rejected("no EK certificate verifies against the manufacturers' certificates: %v", errors.Join(errs...))
	}
	encap, err := tpm2.ImportEncapsulationKey(&ekPub)
	if err != nil {
		return fleetapi.Enrollment{}, rejected("EK: %v", err)
	}
	secret := make([]byte, 32)
	if _, err := io.ReadFull(e.cfg.Rand, secret); err != nil {
		return fleetapi.Enrollment{}, err
	}
	defer clear(secret)
	idObject, encSecret, err := tpm2.CreateCredential(e.cfg.Rand, encap, akName.Buffer, secret)
	if err != nil {
		return fleetapi.Enrollment{}, err
	}
	sum := sha256.Sum256(secret)
	id := DeviceID(ekPub)
	d := Device{ID: id, Class: req.Class, EKPublic: tpm2.Marshal(ekPub), EKCert: ekDER, AKPublic: req.AKPublic, SecretHash: sum[:], EnrolledAt: e.now()}
	if err := e.cfg.Store.PutPending(ctx, d); err != nil {
		return fleetapi.Enrollment{}, err
	}
	certSum := sha256.Sum256(ekDER)
	return fleetapi.Enrollment{DeviceID: id, EKCertSHA256: hex.EncodeToString(certSum[:]), CredentialBlob: idObject, CredentialSecret: encSecret}, nil
}

// Activate completes an enrollment with the credential's secret.
func (e *Endpoint) Activate(ctx context.Context, req fleetapi.ActivateRequest) (fleetapi.Device, error) {
	sum := sha256.Sum256(req.Secret)
	d, err := e.cfg.Store.Activate(ctx, req.DeviceID, sum[:], e.now())
	if err != nil {
		return fleetapi.Device{}, err
	}
	return deviceView(d), nil
}

func deviceView(d Device) fleetapi.Device {
	return fleetapi.Device{DeviceID: d.ID, Class: d.Class, State: d.State, EnrolledAt: d.EnrolledAt, LastVerdict: d.LastVerdict, LastAt: d.LastAt}
}

// selection is what a device of class quotes: its policy's PCRs (and the
// boot hook's PCR when the policy names manifests), else the default.
func (e *Endpoint) selection(p *Policy) map[string][]int {
	if p == nil || len(p.PCRs) == 0 {
		return e.cfg.DefaultPCRs
	}
	out := map[string][]int{}
	for bank, vals := range p.PCRs {
		for i := range vals {
			out[bank] = append(out[bank], i)
		}
		sort.Ints(out[bank])
	}
	if len(p.Manifests) > 0 && !contains(out["sha256"], 12) {
		out["sha256"] = append(out["sha256"], 12)
		sort.Ints(out["sha256"])
	}
	return out
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (e *Endpoint) policy(ctx context.Context, class string) (*Policy, error) {
	p, err := e.cfg.Store.Policy(ctx, class)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// looked is a device and its class's policy read once per request (the
// server's rate limiter reads it; the endpoint takes it from the context).
type looked struct {
	d Device
	p *Policy
}

type lookedKey struct{}

// WithDevice returns ctx carrying device d and its class's policy p, as
// read by Store.DeviceWithPolicy, for the endpoint's method serving this
// request: the appraisal then reads nothing more.
func WithDevice(ctx context.Context, d Device, p *Policy) context.Context {
	return context.WithValue(ctx, lookedKey{}, looked{d, p})
}

// lookup is device id and its class's policy: from the request's context
// when the server read them, else one read of the store.
func (e *Endpoint) lookup(ctx context.Context, id string) (Device, *Policy, error) {
	if l, ok := ctx.Value(lookedKey{}).(looked); ok && l.d.ID == id {
		return l.d, l.p, nil
	}
	return e.cfg.Store.DeviceWithPolicy(ctx, id)
}

// Challenge issues a single-use nonce to an enrolled device, with the PCRs
// to quote.
func (e *Endpoint) Challenge(ctx context.Context, req fleetapi.ChallengeRequest) (fleetapi.Challenge, error) {
	d, p, err := e.lookup(ctx, req.DeviceID)
	if err != nil {
		return fleetapi.Challenge{}, err
	}
	if d.State != StateEnrolled {
		return fleetapi.Challenge{}, rejected("device %s is %s", d.ID, d.State)
	}
	expires := e.now().Add(e.cfg.NonceTTL)
	nonce, err := e.newNonce(ctx, d.ID, expires)
	if err != nil {
		return fleetapi.Challenge{}, err
	}
	return fleetapi.Challenge{Nonce: nonce, ExpiresAt: expires, PCRs: e.selection(p)}, nil
}

// Nonces are authenticated by the endpoint, not stored at challenge time
// (found by review: a stored nonce per challenge let anyone who knows a
// device's public ID flood challenges under it and evict the device's own;
// and an unbounded table, or a cap, was the price): version 1, the expiry
// (Unix milliseconds), 16 random bytes, and the first 16 bytes of
// HMAC-SHA256(the replicas' shared key, label || device ID || the rest).
// A nonce is stored when the verdict it answered is recorded, in the same
// transaction, until it expires, so one verdict is recorded per nonce on
// any replica.
const (
	nonceVersion = 1
	nonceBody    = 1 + 8 + 16
	nonceSize    = nonceBody + 16
)

var nonceLabel = []byte("provd fleet nonce v1\x00")

func (e *Endpoint) nonceKey(ctx context.Context) ([]byte, error) {
	e.keyMu.Lock()
	defer e.keyMu.Unlock()
	if e.key == nil {
		k, err := e.cfg.Store.NonceKey(ctx)
		if err != nil {
			return nil, err
		}
		e.key = k
	}
	return e.key, nil
}

func nonceTag(key []byte, deviceID string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(nonceLabel)
	m.Write([]byte(deviceID))
	m.Write(body)
	return m.Sum(nil)[:16]
}

func (e *Endpoint) newNonce(ctx context.Context, deviceID string, expires time.Time) ([]byte, error) {
	key, err := e.nonceKey(ctx)
	if err != nil {
		return nil, err
	}
	n := make([]byte, nonceBody, nonceSize)
	n[0] = nonceVersion
	binary.BigEndian.PutUint64(n[1:9], uint64(expires.UnixMilli()))
	if _, err := io.ReadFull(e.cfg.Rand, n[9:nonceBody]); err != nil {
		return nil, err
	}
	return append(n, nonceTag(key, deviceID, n)...), nil
}

// MaxRecordDelay is how long after its nonce's expiry an appraisal that
// began before it may still be recorded (see NonceKeep).
const MaxRecordDelay = time.Minute

// checkNonce checks that nonce is one this endpoint (any replica) issued
// to deviceID, unexpired; the record of the appraisal takes it, once
// across replicas (Appraisal.Nonce), in the same transaction.
func (e *Endpoint) checkNonce(ctx context.Context, deviceID string, nonce []byte) (*Nonce, error) {
	key, err := e.nonceKey(ctx)
	if err != nil {
		return nil, err
	}
	if len(nonce) != nonceSize || nonce[0] != nonceVersion || !hmac.Equal(nonce[nonceBody:], nonceTag(key, deviceID, nonce[:nonceBody])) {
		return nil, ErrNonceUnknown
	}
	expires := time.UnixMilli(int64(binary.BigEndian.Uint64(nonce[1:9]))).UTC()
	if !e.now().Before(expires) {
		return nil, ErrNonceExpired
	}
	return &Nonce{Nonce: nonce, DeviceID: deviceID, ExpiresAt: expires}, nil
}

func pcrReason(code string, bank tpm2.TPMIAlgHash, pcr int, detail string) Reason {
	return Reason{Code: code, Bank: catalog.HashName(bank), PCR: &pcr, Detail: detail}
}

// Attest appraises a device's evidence: the device enrolled and active, the
// nonce issued to it and unused, the quote signed by its AK over that nonce
// and covering the PCRs its class needs, the reported PCR values the quoted
// ones, the event logs replaying to them, then PCRs and provd's firmware
// verdicts against the class's policy (or, for a class without one, the
// quote taken as its baseline: trust on first use, said in the record).
// Evidence is verified before anything of it is kept. A failing appraisal is
// a verdict with its reasons, recorded; an error is the endpoint's own
// trouble (the store).
func (e *Endpoint) Attest(ctx context.Context, req fleetapi.AttestRequest) (fleetapi.Verdict, error) {
	v := fleetapi.Verdict{DeviceID: req.DeviceID, At: e.now()}
	d, p, err := e.lookup(ctx, req.DeviceID)
	if errors.Is(err, ErrNotFound) {
		v.Reasons = []Reason{{Code: CodeDeviceUnknown}}
		return v, nil // nothing to record it under
	}
	if err != nil {
		return v, err
	}
	reasons, pcrs, nonce, p, err := e.appraise(ctx, d, p, req)
	if err != nil {
		return v, err
	}
	v.Reasons, v.Pass = reasons, true
	for _, r := range reasons {
		if r.Code != CodeBaseline {
			v.Pass = false
		}
	}
	if v.Reasons == nil {
		v.Reasons = []Reason{}
	}
	id := make([]byte, 16)
	if _, err := io.ReadFull(e.cfg.Rand, id); err != nil {
		return v, err
	}
	v.AppraisalID = hex.EncodeToString(id)
	// Only evidence the device's AK signed over a nonce issued to it is
	// recorded (found by review: anyone could write failing appraisals for
	// any device, flipping its last verdict and flooding its history).
	if nonce == nil {
		v.AppraisalID = ""
		return v, nil
	}
	// An appraisal that ran past its nonce's expiry by more than
	// MaxRecordDelay is not recorded: the store keeps a taken nonce only
	// NonceKeep past its expiry (NonceKeep says why).
	if !e.now().Before(nonce.ExpiresAt.Add(MaxRecordDelay)) {
		return fleetapi.Verdict{DeviceID: req.DeviceID, At: v.At, Reasons: []Reason{{Code: CodeNonceExpired}}}, nil
	}
	// One transaction takes the nonce and records the verdict: evidence
	// replayed, even while the first is being appraised on another
	// replica, is refused here and recorded nowhere.
	switch err := e.cfg.Store.RecordAppraisal(ctx, Appraisal{ID: v.AppraisalID, DeviceID: d.ID, Nonce: nonce, At: v.At, Pass: v.Pass, Reasons: v.Reasons, PCRs: pcrs}); {
	case errors.Is(err, ErrNonceUnknown):
		return fleetapi.Verdict{DeviceID: req.DeviceID, At: v.At, Reasons: []Reason{{Code: CodeNonceUnknown}}}, nil
	case errors.Is(err, ErrNotEnrolled):
		return fleetapi.Verdict{DeviceID: req.DeviceID, At: v.At, Reasons: []Reason{{Code: CodeRevoked}}}, nil
	case err != nil:
		return v, err
	}
	if v.Pass && len(req.Peer) > 0 {
		ch, why, err := e.peerChallenge(ctx, d, p, pcrs, req.Peer)
		if err != nil {
			return v, err
		}
		if why != nil {
			v.Reasons = append(v.Reasons, *why)
		}
		v.PeerChallenge = ch
	}
	if v.Pass && req.Fetch {
		if why := withhold(p, pcrs); why != "" {
			v.Reasons = append(v.Reasons, Reason{Code: CodeWithheld, Detail: why})
			return v, nil
		}
		switch v.Deliveries, err = e.deliver(ctx, d, pcrs); {
		case errors.Is(err, ErrNotEnrolled):
			// Revoked after the record: its verdict stands, nothing goes.
			v.Deliveries = nil
			v.Reasons = append(v.Reasons, Reason{Code: CodeWithheld, Detail: "the device was revoked"})
		case err != nil:
			return v, err
		}
	}
	return v, nil
}

// appraise returns the reasons, the quoted PCR values, and whether the
// evidence was authenticated (the nonce issued to the device and taken,
// the quote signed by its AK over it): only then is the verdict recorded.
func (e *Endpoint) appraise(ctx context.Context, d Device, p *Policy, req fleetapi.AttestRequest) ([]Reason, map[string]map[int]string, *Nonce, *Policy, error) {
	switch d.State {
	case StatePending:
		return []Reason{{Code: CodeNotActivated}}, nil, nil, p, nil
	case StateRevoked:
		return []Reason{{Code: CodeRevoked}}, nil, nil, p, nil
	}
	n, err := e.checkNonce(ctx, d.ID, req.Nonce)
	switch {
	case errors.Is(err, ErrNonceUnknown):
		return []Reason{{Code: CodeNonceUnknown}}, nil, nil, p, nil
	case errors.Is(err, ErrNonceExpired):
		return []Reason{{Code: CodeNonceExpired}}, nil, nil, p, nil
	case err != nil:
		return nil, nil, nil, nil, err
	}
	ak, err := e.akPublic(d.AKPublic)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("fleet: device %s: stored AK: %w", d.ID, err)
	}
	require := map[tpm2.TPMIAlgHash][]int{}
	for bank, idx := range e.selection(p) {
		b, err := policy.ParseBank(bank)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("fleet: class %s: %w", d.Class, err)
		}
		require[b.Alg()] = idx
	}
	// A quote that registers a peer file vouches for it too.
	qualifying := req.Nonce
	if len(req.Peer) > 0 {
		qualifying = fleetapi.PeerQualifying(req.Nonce, req.Peer)
	}
	q, err := attest.VerifyQuote(ak, req.Quote, req.Signature, qualifying, attest.Options{})
	switch {
	case errors.Is(err, attest.ErrSignature):
		return []Reason{{Code: CodeQuoteSignature, Detail: err.Error()}}, nil, nil, p, nil
	case errors.Is(err, attest.ErrNonce):
		return []Reason{{Code: CodeQuoteNonce, Detail: err.Error()}}, nil, nil, p, nil
	case err != nil:
		return []Reason{{Code: CodeQuoteMalformed, Detail: err.Error()}}, nil, nil, p, nil
	}
	// Signed by the device's AK over its nonce: recorded from here on.
	for bank, idx := range require {
		if err := q.Covers(bank, idx...); err != nil {
			return []Reason{{Code: CodeQuoteUncovered, Detail: err.Error()}}, nil, n, p, nil
		}
	}
	quoted, view, bad := reportedPCRs(req.PCRs, q)
	if bad != nil {
		return []Reason{*bad}, nil, n, p, nil
	}
	if err := q.CheckPCRs(quoted); err != nil {
		return []Reason{{Code: CodePCRDigest, Detail: err.Error()}}, nil, n, p, nil
	}
	// From here on the PCR values are the TPM's (only the quoted ones are
	// kept): recorded with the verdict.
	reasons, verdicts := checkLogs(quoted, req)
	if len(reasons) > 0 {
		return reasons, view, n, p, nil
	}
	if p == nil {
		base := Policy{Class: d.Class, PCRs: view, TOFU: true, UpdatedAt: e.now()}
		cur, stored, err := e.cfg.Store.Baseline(ctx, d.ID, base)
		if errors.Is(err, ErrNotEnrolled) {
			// Revoked while this appraisal ran: its quote is no
			// class's baseline, and nothing is recorded.
			return []Reason{{Code: CodeRevoked}}, nil, nil, p, nil
		}
		if err != nil {
			return nil, nil, nil, nil, err
		}
		if stored {
			return []Reason{{Code: CodeBaseline, Detail: "no golden values for class " + d.Class + ": this quote's PCRs are its baseline"}}, view, n, p, nil
		}
		p = &cur
	}
	return comparePolicy(p, d.Class, quoted, verdicts), view, n, p, nil
}

// reportedPCRs reads the device's PCR values (bank name -> index -> hex):
// exactly the PCRs the quote selects, no other (found by review: values
// the quote did not cover were believed, by the log check and in the
// trust-on-first-use baseline).
func reportedPCRs(in map[string]map[string]string, q *attest.Quote) (attest.PCRValues, map[string]map[int]string, *Reason) {
	out := attest.PCRValues{}
	view := map[string]map[int]string{}
	selected := q.Selected()
	for bank, vals := range in {
		b, err := policy.ParseBank(bank)
		if err != nil {
			return nil, nil, &Reason{Code: CodeQuoteMalformed, Detail: err.Error()}
		}
		out[b.Alg()] = map[int][]byte{}
		view[bank] = map[int]string{}
		for k, h := range vals {
			i, err := strconv.Atoi(k)
			v, herr := hex.DecodeString(h)
			if err != nil || herr != nil || i < 0 || i > 23 || len(v) != b.Hash().Size() || strconv.Itoa(i) != k {
				return nil, nil, &Reason{Code: CodeQuoteMalformed, Detail: fmt.Sprintf("PCR %q of bank %s", k, bank)}
			}
			if !contains(selected[b.Alg()], i) {
				return nil, nil, &Reason{Code: CodeQuoteMalformed, Bank: bank, PCR: &i, Detail: "a PCR value the quote does not cover"}
			}
			out[b.Alg()][i] = v
			view[bank][i] = hex.EncodeToString(v)
		}
	}
	return out, view, nil
}

// HookPCR is the PCR provd's boot hook measures its verdicts into.
const HookPCR = 12

// checkLogs replays the firmware's log and provd's measurement log: every
// PCR either extends must be quoted and equal to the replay, and no PCR may
// be extended by both. The measurement log holds provd's verdicts only, in
// HookPCR, and answers for HookPCR whenever it is quoted, even if it names
// no event there (found by review: a verdict extended into another PCR, or
// a log that left PCR 12 out, passed a manifests-only policy). It returns
// provd's verdicts, in order.
func checkLogs(quoted attest.PCRValues, req fleetapi.AttestRequest) ([]Reason, []provdVerdict) {
	var reasons []Reason
	var verdicts []provdVerdict
	touched := map[tpm2.TPMIAlgHash]map[int]string{}
	for _, lg := range []struct {
		name string
		raw  []byte
	}{{"firmware", req.FirmwareLog}, {"measurement", req.MeasurementLog}} {
		if len(lg.raw) == 0 {
			continue
		}
		// The request's own bytes, which nothing else holds or changes.
		l, err := attest.ParseOwnedEventLog(lg.raw)
		if err != nil {
			reasons = append(reasons, Reason{Code: CodeLogMalformed, Log: lg.name, Detail: err.Error()})
			continue
		}
		replayed, err := l.Replay(attest.Options{})
		if err != nil {
			reasons = append(reasons, Reason{Code: CodeLogMalformed, Log: lg.name, Detail: err.Error()})
			continue
		}
		for i, ev := range l.Events {
			n := i
			if err := attest.CheckProvdEvent(ev); err != nil {
				reasons = append(reasons, Reason{Code: CodeLogEvent, Log: lg.name, Event: &n, Detail: err.Error()})
				continue
			}
			provd := attest.ProvdEventText(ev) != ""
			switch {
			case lg.name == "firmware" && provd:
				reasons = append(reasons, Reason{Code: CodeLogEvent, Log: lg.name, Event: &n, Detail: "a verdict of provd's boot hook in the firmware's log"})
			case lg.name == "measurement" && (!provd || ev.PCR != HookPCR):
				reasons = append(reasons, Reason{Code: CodeLogEvent, Log: lg.name, Event: &n, Detail: fmt.Sprintf("the measurement log holds provd's verdicts in PCR %d only", HookPCR)})
			case provd:
				v, ok := attest.VerifiedBy(ev)
				verdicts = append(verdicts, provdVerdict{event: i, ok: ok, verdict: v})
			}
		}
		for bank, vals := range replayed {
			if touched[bank] == nil {
				touched[bank] = map[int]string{}
			}
			own := map[int]bool{}
			for _, ev := range l.Events {
				if ev.Type != attest.EVNoAction {
					own[ev.PCR] = true
				}
			}
			if _, ok := quoted[bank][HookPCR]; ok && lg.name == "measurement" {
				own[HookPCR] = true
			}
			for pcr := range own {
				if other, ok := touched[bank][pcr]; ok && other != lg.name {
					reasons = append(reasons, pcrReason(CodeLogOverlap, bank, pcr, "extended by both the "+other+" and the "+lg.name+" log"))
					continue
				}
				touched[bank][pcr] = lg.name
				got, ok := quoted[bank][pcr]
				if !ok {
					reasons = append(reasons, pcrReason(CodeLogUnquoted, bank, pcr, "the "+lg.name+" log extends it, the quote does not cover it"))
					continue
				}
				if !bytes.Equal(got, vals[pcr]) {
					reasons = append(reasons, pcrReason(CodeLogReplay, bank, pcr, fmt.Sprintf("the %s log replays to %x, the quote says %x", lg.name, vals[pcr], got)))
				}
			}
		}
	}
	sort.SliceStable(reasons, func(i, j int) bool { return reasonKey(reasons[i]) < reasonKey(reasons[j]) })
	return dedupe(reasons), verdicts
}

func reasonKey(r Reason) string {
	k := r.Code + "/" + r.Bank + "/" + r.Log
	if r.PCR != nil {
		k += fmt.Sprintf("/%02d", *r.PCR)
	}
	return k
}

func dedupe(rs []Reason) []Reason {
	var out []Reason
	seen := map[string]bool{}
	for _, r := range rs {
		k := reasonKey(r) + "/" + r.Detail
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// provdVerdict is one of provd's boot-hook verdicts in the measurement log.
type provdVerdict struct {
	event   int
	ok      bool // "verified" (else failed)
	verdict attest.Verdict
}

// comparePolicy checks the quoted PCRs against the policy's golden values
// and, when the policy lists manifests, provd's boot-hook verdict: the
// measurement log (which replays to the quoted HookPCR) must hold exactly
// one verdict, verified, for this device's class and an allowed manifest:
// HookPCR then holds that verdict's good value, the first extend after
// reset.
func comparePolicy(p *Policy, class string, quoted attest.PCRValues, verdicts []provdVerdict) []Reason {
	var reasons []Reason
	banks := make([]string, 0, len(p.PCRs))
	for b := range p.PCRs {
		banks = append(banks, b)
	}
	sort.Strings(banks)
	for _, bank := range banks {
		b, err := policy.ParseBank(bank)
		if err != nil {
			reasons = append(reasons, Reason{Code: CodePCRPolicy, Bank: bank, Detail: "the policy names an unknown bank"})
			continue
		}
		idx := make([]int, 0, len(p.PCRs[bank]))
		for i := range p.PCRs[bank] {
			idx = append(idx, i)
		}
		sort.Ints(idx)
		for _, i := range idx {
			want := p.PCRs[bank][i]
			got := hex.EncodeToString(quoted[b.Alg()][i])
			if got != want {
				reasons = append(reasons, pcrReason(CodePCRPolicy, b.Alg(), i, fmt.Sprintf("quoted %s, the policy says %s", got, want)))
			}
		}
	}
	if len(p.Manifests) == 0 {
		return reasons
	}
	allowed := map[string]bool{}
	for _, m := range p.Manifests {
		allowed[m] = true
	}
	if len(verdicts) != 1 {
		return append(reasons, Reason{Code: CodeFirmwareManifest, Log: "measurement",
			Detail: fmt.Sprintf("%d verdicts of provd's boot hook in PCR %d, want exactly one (the first extend after reset)", len(verdicts), HookPCR)})
	}
	v := verdicts[0]
	n := v.event
	switch {
	case !v.ok:
		reasons = append(reasons, Reason{Code: CodeFirmwareFailed, Log: "measurement", Event: &n, Detail: "the boot hook's verification failed"})
	case v.verdict.Class != class:
		reasons = append(reasons, Reason{Code: CodeFirmwareManifest, Log: "measurement", Event: &n, Detail: fmt.Sprintf("a verdict for class %q, the device is %q", v.verdict.Class, class)})
	case !allowed[hex.EncodeToString(v.verdict.ManifestSHA256)]:
		reasons = append(reasons, Reason{Code: CodeFirmwareManifest, Log: "measurement", Event: &n, Detail: fmt.Sprintf("manifest %x is not one the policy allows", v.verdict.ManifestSHA256)})
	default:
		want := attest.HashOf(crypto.SHA256, append(make([]byte, 32), attest.VerifiedMeasurement(crypto.SHA256, v.verdict.Officer, v.verdict.Class, v.verdict.ManifestSHA256)...))
		if got := quoted[tpm2.TPMAlgSHA256][HookPCR]; !bytes.Equal(got, want) {
			pcr := HookPCR
			reasons = append(reasons, Reason{Code: CodeFirmwareManifest, Bank: "sha256", PCR: &pcr, Detail: "the PCR does not hold the verdict's good value (not the first extend after reset)"})
		}
	}
	return reasons
}
