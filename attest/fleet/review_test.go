package fleet_test

// Attacks an adversarial review of the fleet endpoint found, kept as
// tests: each broke the endpoint before its fix (docs/threat-model.md).

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/pgtest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// ---- harness: an endpoint, and a device that is a genuine swtpm with a
// genuine AK (a restricted signing primary in the owner hierarchy), driven
// with go-tpm directly: the device's owner is the attacker where it says so.

type reviewFleet struct {
	e     *fleet.Endpoint
	st    fleet.Store
	path  string
	roots *x509.CertPool
}

func reviewEndpoint(t *testing.T, envs ...*swtpmtest.Env) *reviewFleet {
	t.Helper()
	return reviewEndpointWith(t, nil, envs...)
}

func reviewEndpointWith(t *testing.T, extra *x509.Certificate, envs ...*swtpmtest.Env) *reviewFleet {
	t.Helper()
	var bundle []byte
	for _, env := range envs {
		bundle = append(bundle, env.CAPEM()...)
	}
	pool, err := attest.CertPoolFromPEM(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if extra != nil {
		pool.AddCert(extra)
	}
	path := filepath.Join(t.TempDir(), "fleet.db")
	st, err := fleet.Open(context.Background(), "sqlite://"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &reviewFleet{e: fleet.New(fleet.Config{Store: st, Roots: pool}), st: st, path: path, roots: pool}
}

type reviewDevice struct {
	t     *testing.T
	env   *swtpmtest.Env
	certs [][]byte
	ak    tpm2.TPMHandle
	name  tpm2.TPM2BName
	pub   tpm2.TPMTPublic
}

func newReviewDevice(t *testing.T, env *swtpmtest.Env) *reviewDevice {
	t.Helper()
	d := &reviewDevice{t: t, env: env}
	for _, c := range tpm.EKCertIndices {
		der, err := env.TPM.ReadNV(c.Handle)
		if errors.Is(err, tpm.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		d.certs = append(d.certs, der)
	}
	tmpl := tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})}
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}).Execute(env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(env.TPM) })
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	d.ak, d.name, d.pub = rsp.ObjectHandle, rsp.Name, *pub
	return d
}

// enrolledDevice is an endpoint and a device enrolled in class gateway on
// a swtpm of its own.
func enrolledDevice(t *testing.T) (*reviewFleet, *reviewDevice, string) {
	t.Helper()
	env := swtpmtest.Start(t)
	f := reviewEndpoint(t, env)
	d := newReviewDevice(t, env)
	id, err := d.enroll(f, "gateway", d.certs)
	if err != nil {
		t.Fatal(err)
	}
	return f, d, id
}

// enroll enrolls with the given EK certificates and activates the
// credential with this TPM's EK and AK, as provd attest enroll does.
func (d *reviewDevice) enroll(f *reviewFleet, class string, certs [][]byte) (string, error) {
	t := d.t
	t.Helper()
	ctx := context.Background()
	enr, err := f.e.Enroll(ctx, fleetapi.EnrollRequest{EKCertificates: certs, AKPublic: tpm2.Marshal(d.pub), Class: class})
	if err != nil {
		return "", err
	}
	secret := d.activate(enr)
	if _, err := f.e.Activate(ctx, fleetapi.ActivateRequest{DeviceID: enr.DeviceID, Secret: secret}); err != nil {
		return enr.DeviceID, err
	}
	return enr.DeviceID, nil
}

func (d *reviewDevice) activate(enr fleetapi.Enrollment) []byte {
	d.t.Helper()
	secret, err := d.activateWith(enr.EKCertSHA256, tpm2.AuthHandle{Handle: d.ak, Name: d.name, Auth: tpm2.PasswordAuth(nil)}, enr.CredentialBlob, enr.CredentialSecret)
	if err != nil {
		d.t.Fatalf("ActivateCredential: %v", err)
	}
	return secret
}

// activateWith activates a credential with the EK whose certificate has
// SHA-256 ekSum and the object activate names.
func (d *reviewDevice) activateWith(ekSum string, activate tpm2.AuthHandle, blob, encSecret []byte) ([]byte, error) {
	t := d.t
	t.Helper()
	var cert *x509.Certificate
	for _, der := range d.certs {
		sum := sha256.Sum256(der)
		if hex.EncodeToString(sum[:]) == ekSum {
			cert, _ = x509.ParseCertificate(der)
		}
	}
	if cert == nil {
		t.Fatal("the credential names none of this TPM's EK certificates")
	}
	var tmpl tpm2.TPMTPublic
	switch cert.PublicKey.(type) {
	case *rsa.PublicKey:
		tmpl = tpm2.RSAEKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
	case *ecdsa.PublicKey:
		tmpl = tpm2.ECCEKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}})
	}
	ek, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}).Execute(d.env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	defer (tpm2.FlushContext{FlushHandle: ek.ObjectHandle}).Execute(d.env.TPM)
	rsp, err := (tpm2.ActivateCredential{
		ActivateHandle: activate,
		KeyHandle: tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name,
			Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, n tpm2.TPM2BNonce) error {
				_, err := (tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: n}).Execute(tp)
				return err
			})},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: blob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
	}).Execute(d.env.TPM)
	if err != nil {
		return nil, err
	}
	return rsp.CertInfo.Buffer, nil
}

// extend extends one SHA-256 digest into a PCR (root on the device can).
func (d *reviewDevice) extend(pcr int, digest []byte) {
	d.t.Helper()
	if _, err := (tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}}}).Execute(d.env.TPM); err != nil {
		d.t.Fatal(err)
	}
}

// evidence is a genuine quote by the TPM over the challenge's nonce and
// SHA-256 PCRs, with the PCR values read.
func (d *reviewDevice) evidence(id string, ch fleetapi.Challenge) fleetapi.AttestRequest {
	t := d.t
	t.Helper()
	bitmap := make([]byte, 3)
	for _, i := range ch.PCRs["sha256"] {
		bitmap[i/8] |= 1 << (i % 8)
	}
	q, err := (tpm2.Quote{SignHandle: tpm2.AuthHandle{Handle: d.ak, Name: d.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: ch.Nonce}, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}}}).Execute(d.env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{}
	for _, i := range ch.PCRs["sha256"] {
		vals[strconv.Itoa(i)] = hex.EncodeToString(d.pcr(i))
	}
	return fleetapi.AttestRequest{DeviceID: id, Nonce: ch.Nonce, Quote: q.Quoted.Bytes(), Signature: tpm2.Marshal(q.Signature),
		PCRs: map[string]map[string]string{"sha256": vals}}
}

func (d *reviewDevice) pcr(i int) []byte {
	b := make([]byte, 3)
	b[i/8] = 1 << (i % 8)
	r, err := (tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: b}}}}).Execute(d.env.TPM)
	if err != nil || len(r.PCRValues.Digests) != 1 {
		d.t.Fatalf("PCRRead %d: %v", i, err)
	}
	return r.PCRValues.Digests[0].Buffer
}

func (f *reviewFleet) attest(t *testing.T, d *reviewDevice, id string, mutate func(*fleetapi.AttestRequest)) fleetapi.Verdict {
	t.Helper()
	ctx := context.Background()
	ch, err := f.e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	req := d.evidence(id, ch)
	if mutate != nil {
		mutate(&req)
	}
	v, err := f.e.Attest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// verifiedEvent is a provd boot-hook "verified" event for manifest, whose
// SHA-256 digest is the one the text names (CheckProvdEvent accepts it).
func verifiedEvent(pcr int, class string, manifest []byte) attest.Event {
	officer := append([]byte{0, 0x0b}, make([]byte, 32)...)
	return attest.Event{PCR: pcr, Type: attest.EVEventTag,
		Data:    attest.TaggedEvent(attest.VerifiedEventText(officer, class, manifest)),
		Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: attest.VerifiedMeasurement(crypto.SHA256, officer, class, manifest)}}}
}

func logOf(t *testing.T, evs ...attest.Event) []byte {
	t.Helper()
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if err := l.AppendEvent(e); err != nil {
			t.Fatal(err)
		}
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func extendSHA256(old, digest []byte) []byte {
	h := sha256.New()
	h.Write(old)
	h.Write(digest)
	return h.Sum(nil)
}

// ---- findings

// TestVerdictOutsidePCR12: the class's policy allows firmware
// manifest M only. The device's boot hook failed (PCR 12 holds the failed
// measurement). Root on the device extends a "verified M" measurement into
// PCR 7 (any quoted PCR extendable at locality 0), and sends a measurement
// log of that one event and no firmware log. Everything is a genuine quote
// by the enrolled AK over a fresh nonce; the endpoint accepts a verdict
// from PCR 7 and never asks the log to explain PCR 12.
func TestVerdictOutsidePCR12(t *testing.T) {
	f, d, id := enrolledDevice(t)
	manifest := sha256.Sum256([]byte("the allowed release"))
	if err := f.st.SetPolicy(context.Background(), fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{}, Manifests: []string{hex.EncodeToString(manifest[:])}}); err != nil {
		t.Fatal(err)
	}
	// The boot hook's real verdict: failed.
	d.extend(12, attest.FailedMeasurement(crypto.SHA256))
	// Sanity: honest evidence (PCR 12's failed event in the log) fails.
	failed := attest.Event{PCR: 12, Type: attest.EVEventTag, Data: attest.TaggedEvent(attest.FailedText + "bad signature"),
		Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: attest.FailedMeasurement(crypto.SHA256)}}}
	if v := f.attest(t, d, id, func(r *fleetapi.AttestRequest) { r.MeasurementLog = logOf(t, failed) }); v.Pass {
		t.Fatalf("honest failed boot passed: %+v", v)
	}
	// The attack.
	ev := verifiedEvent(7, "gateway", manifest[:])
	d.extend(7, ev.Digests[0].Digest)
	v := f.attest(t, d, id, func(r *fleetapi.AttestRequest) { r.MeasurementLog = logOf(t, ev) })
	if v.Pass {
		t.Fatalf("BREAK: a device whose boot hook failed (PCR 12 = failed measurement, quoted) passes the manifest policy with a 'verified' event its root extended into PCR 7; PCR 12 left out of the log: %+v", v)
	}
	t.Logf("held: %+v", v)
}

// TestUnquotedReportedPCR: reported PCR values the quote does not
// cover count as quoted for the log checks: a measurement log extending
// PCR 13 (never quoted) with a "verified M" event passes as long as the
// device also reports PCR 13 = the log's replay. No TPM extend needed: the
// whole verdict is made up.
func TestUnquotedReportedPCR(t *testing.T) {
	f, d, id := enrolledDevice(t)
	manifest := sha256.Sum256([]byte("the allowed release"))
	if err := f.st.SetPolicy(context.Background(), fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{}, Manifests: []string{hex.EncodeToString(manifest[:])}}); err != nil {
		t.Fatal(err)
	}
	d.extend(12, attest.FailedMeasurement(crypto.SHA256))
	ev := verifiedEvent(13, "gateway", manifest[:])
	v := f.attest(t, d, id, func(r *fleetapi.AttestRequest) {
		r.MeasurementLog = logOf(t, ev)
		r.PCRs["sha256"]["13"] = hex.EncodeToString(extendSHA256(make([]byte, 32), ev.Digests[0].Digest))
	})
	if v.Pass {
		t.Fatalf("BREAK: a made-up 'verified' event in PCR 13, which the quote does not cover, passes because the device also reported a PCR 13 value: %+v", v)
	}
	t.Logf("held: %+v", v)
}

// TestTOFUPoisonedByUnquotedPCR: for a class without a policy, the
// first verified quote becomes the baseline, including PCR values the
// device reported and the quote never covered. The first device of the
// class adds "PCR 23 = X" (its TPM's PCR 23 is zero): the class's baseline
// now names PCR 23, every later device is asked to quote it, and every
// genuine device of the class fails.
func TestTOFUPoisonedByUnquotedPCR(t *testing.T) {
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	f := reviewEndpoint(t, envA, envB)
	a, b := newReviewDevice(t, envA), newReviewDevice(t, envB)
	idA, err := a.enroll(f, "gateway", a.certs)
	if err != nil {
		t.Fatal(err)
	}
	idB, err := b.enroll(f, "gateway", b.certs)
	if err != nil {
		t.Fatal(err)
	}
	bogus := sha256.Sum256([]byte("never quoted"))
	v := f.attest(t, a, idA, func(r *fleetapi.AttestRequest) { r.PCRs["sha256"]["23"] = hex.EncodeToString(bogus[:]) })
	if v.Pass || v.Reasons[0].Code != fleet.CodeQuoteMalformed {
		t.Fatalf("a reported PCR the quote does not cover: %+v", v)
	}
	if _, err := f.st.Policy(context.Background(), "gateway"); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("a refused quote set a baseline: %v", err)
	}
	if v := f.attest(t, a, idA, nil); !v.Pass {
		t.Fatalf("A honest: %+v", v)
	}
	p, err := f.st.Policy(context.Background(), "gateway")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.PCRs["sha256"][23]; ok {
		t.Fatalf("the baseline names PCR 23: %+v", p.PCRs)
	}
	if vb := f.attest(t, b, idB, nil); !vb.Pass {
		t.Fatalf("a genuine device of the class after the baseline: %+v", vb)
	}
}

// TestPendingHijack: EK certificates are public (the TPM's NV, the
// manufacturer's servers, the enrollment itself). Anyone with the victim's
// EK certificate replaces the victim's pending enrollment (another AK, a
// new credential) between the victim's enroll and activate: the victim's
// activation, with the genuine secret of its own credential, is refused.
// Repeated, the victim never enrolls.
func TestPendingHijack(t *testing.T) {
	env := swtpmtest.Start(t)
	f := reviewEndpoint(t, env)
	victim := newReviewDevice(t, env)
	ctx := context.Background()
	enr, err := f.e.Enroll(ctx, fleetapi.EnrollRequest{EKCertificates: victim.certs, AKPublic: tpm2.Marshal(victim.pub), Class: "gateway"})
	if err != nil {
		t.Fatal(err)
	}
	// The network attacker: the victim's EK certificate, any AK of its own.
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecdh, _ := k.PublicKey.ECDH()
	raw := ecdh.Bytes()
	other := victim.pub
	other.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})
	if _, err := f.e.Enroll(ctx, fleetapi.EnrollRequest{EKCertificates: victim.certs, AKPublic: tpm2.Marshal(other), Class: "attacker-class"}); err != nil {
		t.Logf("held: %v", err)
		return
	}
	secret := victim.activate(enr)
	if _, err := f.e.Activate(ctx, fleetapi.ActivateRequest{DeviceID: enr.DeviceID, Secret: secret}); errors.Is(err, fleet.ErrWrongSecret) {
		dev, _ := f.st.Device(ctx, enr.DeviceID)
		t.Fatalf("BREAK: an unauthenticated party holding only the victim's (public) EK certificate replaced its pending enrollment; the victim's genuine activation is refused (%v); the record now has class %q and the attacker's AK", err, dev.Class)
	}
}

// TestUnauthenticatedFailRecorded: anyone who knows a device's ID
// (hex SHA-256 of its EK public area, computable from its public EK
// certificate) records failed appraisals for it with an empty request: no
// nonce, no quote. The device's last verdict turns from pass to fail, and
// its history (the operator reads the last 100) fills with junk.
func TestUnauthenticatedFailRecorded(t *testing.T) {
	f, d, id := enrolledDevice(t)
	if v := f.attest(t, d, id, nil); !v.Pass {
		t.Fatalf("first: %+v", v)
	}
	ctx := context.Background()
	for range 100 {
		if _, err := f.e.Attest(ctx, fleetapi.AttestRequest{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	dev, err := f.st.Device(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	hist, _ := f.st.Appraisals(ctx, id, 100)
	passes := 0
	for _, a := range hist {
		if a.Pass {
			passes++
		}
	}
	if dev.LastVerdict == "fail" || passes == 0 {
		t.Fatalf("BREAK: 100 empty, unauthenticated attest requests recorded as the device's appraisals: last verdict %q, the genuine pass gone from the last %d of its history", dev.LastVerdict, len(hist))
	}
}

// TestNonceTableGrows: challenges are issued to anyone for any
// enrolled device's ID, each a row, and expired rows are swept only when
// some device's nonce is taken: no bound, no rate limit.
func TestNonceTableGrows(t *testing.T) {
	f, _, id := enrolledDevice(t)
	ctx := context.Background()
	const n = 5000
	for range n {
		if _, err := f.e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows int
	if err := db.QueryRow(`SELECT count(*) FROM nonces`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows >= n {
		t.Fatalf("BREAK: %d unauthenticated challenges for one device are %d live nonce rows: no per-device bound", n, rows)
	}
}

// TestTokenOverCleartext: NewClient takes http:// URLs, and an
// operator's client then sends its bearer token in the clear (fleet
// devices --endpoint http://...): anyone on the path has the operator's
// power.
func TestTokenOverCleartext(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Get("Authorization"):
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("[]"))
	}))
	defer srv.Close()
	c, err := fleetapi.NewClient(srv.URL, nil, "operator-secret-token")
	if err != nil {
		t.Logf("held: %v", err)
		return
	}
	_, _ = c.Devices(context.Background())
	if h := <-got; h != "" {
		t.Fatalf("BREAK: the operator token crossed plain HTTP: %q", h)
	}
}

// TestActivateRacePostgres: on PostgreSQL (READ COMMITTED), Activate
// reads the pending row, checks the secret in Go, then updates "WHERE id
// AND state = pending", which matches a pending row PutPending put in
// between (another AK, another credential). The victim's genuine
// activation then enrolls the attacker's AK under the victim's device ID:
// the attacker (EK certificate only, public) signs that device's quotes.
func TestActivateRacePostgres(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := context.Background()
	r1, err := fleet.Open(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := fleet.Open(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	victimAK, attackerAK := []byte("victim AK"), []byte("attacker AK")
	for i := range 2000 {
		id := fmt.Sprintf("dev-%04d", i)
		h1, h2 := sha256.Sum256([]byte("victim secret "+id)), sha256.Sum256([]byte("attacker secret "+id))
		if err := r1.PutPending(ctx, fleet.Device{ID: id, Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: victimAK, SecretHash: h1[:], EnrolledAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var actErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, actErr = r1.Activate(ctx, id, h1[:], time.Now())
		}()
		go func() {
			defer wg.Done()
			_ = r2.PutPending(ctx, fleet.Device{ID: id, Class: "attacker-class", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: attackerAK, SecretHash: h2[:], EnrolledAt: time.Now()})
		}()
		wg.Wait()
		d, err := r1.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if actErr == nil && d.State == fleet.StateEnrolled && bytes.Equal(d.AKPublic, attackerAK) {
			t.Fatalf("BREAK: after %d tries: the victim's activation (its own secret) enrolled device %s with the attacker's AK %q, class %q", i+1, id, d.AKPublic, d.Class)
		}
	}
	t.Log("held: no interleaving found in 2000 tries")
}
