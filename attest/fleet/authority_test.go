package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
)

// authorityFleet is an endpoint with a duplication authority key and a
// clock the test moves.
type authorityFleet struct {
	*reviewFleet
	key *ecdsa.PrivateKey
	now time.Time
}

func newAuthorityFleet(t *testing.T, env *swtpmtest.Env, withKey bool) *authorityFleet {
	t.Helper()
	base := reviewEndpoint(t, env)
	f := &authorityFleet{reviewFleet: base, now: time.Now().UTC()}
	cfg := fleet.Config{Store: base.st, Roots: base.roots, Now: func() time.Time { return f.now }}
	if withKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		f.key, cfg.Authority = k, k
	}
	f.e = fleet.New(cfg)
	return f
}

// transferKey is a device's PK and its transfer key, both resident in the
// device's TPM (primaries in the owner hierarchy, made as provd makes the
// transfer key: its template, its policy naming the PK).
type transferKey struct {
	pk, t         tpm2.TPMHandle
	pkName, tName tpm2.TPM2BName
	pkAuth        []byte
	pub           tpm2.TPMTPublic
}

func newTransferKey(t *testing.T, tp transport.TPM) *transferKey {
	t.Helper()
	k := &transferKey{pkAuth: []byte("the PK's authValue")}
	pk, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate),
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: k.pkAuth}}}}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	k.pk, k.pkName = persist(t, tp, pk.ObjectHandle, pk.Name, 0x81000100), pk.Name
	tr, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(catalog.TransferTemplate(catalog.TransferPolicy(pk.Name.Buffer)))}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tr.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	k.t, k.tName, k.pub = persist(t, tp, tr.ObjectHandle, tr.Name, 0x81000101), tr.Name, *pub
	return k
}

// persist makes a transient object persistent at handle and flushes it:
// swtpm has three object slots, and an activation needs the EK, T and the
// PK beside the device's AK.
func persist(t *testing.T, tp transport.TPM, h tpm2.TPMHandle, name tpm2.TPM2BName, at tpm2.TPMHandle) tpm2.TPMHandle {
	t.Helper()
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: &tpm2.NamedHandle{Handle: h, Name: name}, PersistentHandle: at}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	return at
}

// parked runs fn with the device's AK out of the TPM's object slots.
func (d *reviewDevice) parked(fn func()) {
	d.t.Helper()
	saved, err := (tpm2.ContextSave{SaveHandle: d.ak}).Execute(d.env.TPM)
	if err != nil {
		d.t.Fatal(err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: d.ak}).Execute(d.env.TPM); err != nil {
		d.t.Fatal(err)
	}
	defer func() {
		rsp, err := (tpm2.ContextLoad{Context: saved.Context}).Execute(d.env.TPM)
		if err != nil {
			d.t.Fatal(err)
		}
		d.ak = rsp.LoadedHandle
	}()
	fn()
}

// admin is T's ADMIN role as provd satisfies it: PolicySecret(its PK),
// PolicyCommandCode(ActivateCredential), PolicyOR of T's branches.
func (k *transferKey) admin(handle tpm2.TPMHandle, name tpm2.TPM2BName) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: handle, Name: name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, n tpm2.TPM2BNonce) error {
		if _, err := (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Handle: k.pk, Name: k.pkName, Auth: tpm2.PasswordAuth(k.pkAuth)}, PolicySession: h, NonceTPM: n}).Execute(tp); err != nil {
			return err
		}
		if _, err := (tpm2.PolicyCommandCode{PolicySession: h, Code: tpm2.TPMCCActivateCredential}).Execute(tp); err != nil {
			return err
		}
		var or tpm2.TPMLDigest
		for _, b := range catalog.TransferBranches(k.pkName.Buffer) {
			or.Digests = append(or.Digests, tpm2.TPM2BDigest{Buffer: b})
		}
		_, err := (tpm2.PolicyOr{PolicySession: h, PHashList: or}).Execute(tp)
		return err
	})}
}

// testPKPolicy is the PK policy digest the tests' class allows.
var testPKPolicy = "42" + strings.Repeat("00", 31)

// peerFileFor is the device's peer identity file for transfer key pub.
func peerFileFor(t *testing.T, certs [][]byte, pub tpm2.TPMTPublic, pkName []byte) []byte {
	t.Helper()
	return peerFileWith(t, certs, pub, hex.EncodeToString(pkName), testPKPolicy)
}

// peerFileWith is a peer identity file with the PK name and policy the
// device claims, as written.
func peerFileWith(t *testing.T, certs [][]byte, pub tpm2.TPMTPublic, pkName, pkPolicy string) []byte {
	t.Helper()
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{"format": 1, "ek_certificates": certs, "parent": tpm2.Marshal(tpm2.New2B(pub)),
		"parent_name": hex.EncodeToString(name.Buffer), "pk_name": pkName, "pk_policy": pkPolicy,
		"officer": hex.EncodeToString(append([]byte{0, 0x0b}, make([]byte, 32)...)), "created_at": time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// attestPeer attests with peer riding in the quote (qualifying data
// PeerQualifying(nonce, quoted)); mutate may change the request after.
func (f *authorityFleet) attestPeer(t *testing.T, d *reviewDevice, id string, quoted, sent []byte) fleetapi.Verdict {
	t.Helper()
	ctx := context.Background()
	ch, err := f.e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	q := ch
	if quoted != nil {
		q.Nonce = fleetapi.PeerQualifying(ch.Nonce, quoted)
	}
	req := d.evidence(id, q)
	req.Nonce, req.Peer = ch.Nonce, sent
	v, err := f.e.Attest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *authorityFleet) setGolden(t *testing.T, d *reviewDevice, class string) {
	t.Helper()
	vals := map[int]string{}
	for i := 0; i <= 7; i++ {
		vals[i] = hex.EncodeToString(d.pcr(i))
	}
	if err := f.st.SetPolicy(context.Background(), fleet.Policy{Class: class, PCRs: map[string]map[int]string{"sha256": vals},
		PKPolicies: []string{testPKPolicy}, UpdatedAt: f.now}); err != nil {
		t.Fatal(err)
	}
}

// TestPeerRegistration: a transfer key is registered only from a quote
// that covers its peer file, after a pass against golden values, and only
// with the answer that the enrolled TPM recovers with that very key
// resident; a software transfer key (its public area loaded from outside)
// cannot recover it; an answer for another file, device or after expiry is
// refused; the file kept names only the enrolled EK certificate.
func TestPeerRegistration(t *testing.T) {
	p := newPeerFixture(t)
	f, d, id, tk, env := p.authorityFleet, p.d, p.id, p.tk, p.env
	ctx := context.Background()
	peer := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer)

	// Under the trust-on-first-use baseline: no challenge.
	if v := f.attestPeer(t, d, id, peer, peer); !v.Pass || v.PeerChallenge != nil || !hasReason(v, fleetapi.CodePeerRefused) {
		t.Fatalf("a peer under a baseline: %+v", v)
	}
	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	// The file must be what the AK quoted.
	if v := f.attestPeer(t, d, id, nil, peer); v.Pass || !hasReason(v, fleet.CodeQuoteNonce) || v.PeerChallenge != nil {
		t.Fatalf("a peer file the quote does not cover: %+v", v)
	}
	other := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer[:33:33])
	if v := f.attestPeer(t, d, id, peer, other); v.Pass || !hasReason(v, fleet.CodeQuoteNonce) {
		t.Fatalf("a peer file swapped after the quote: %+v", v)
	}
	// A file whose transfer key is not bound to the PK it names.
	unbound := peerFileFor(t, d.certs, tk.pub, append([]byte{0, 0x0b}, make([]byte, 32)...))
	if v := f.attestPeer(t, d, id, unbound, unbound); !v.Pass || v.PeerChallenge != nil || !hasReason(v, fleetapi.CodePeerRefused) {
		t.Fatalf("an unbound transfer key: %+v", v)
	}
	// A transfer key made before review 74 (its authValue alone opened
	// what was sent to it): refused as one.
	legacyPub := catalog.LegacyTransferTemplate(catalog.ActivationPolicy(tk.pkName.Buffer))
	legacyPub.Unique = tk.pub.Unique
	legacy := peerFileFor(t, d.certs, legacyPub, tk.pkName.Buffer)
	if v := f.attestPeer(t, d, id, legacy, legacy); !v.Pass || v.PeerChallenge != nil || !hasReason(v, fleetapi.CodePeerRefused) {
		t.Fatalf("a legacy transfer key: %+v", v)
	}

	v := f.attestPeer(t, d, id, peer, peer)
	if !v.Pass || v.PeerChallenge == nil {
		t.Fatalf("%+v", v)
	}
	pc := v.PeerChallenge
	// A software transfer key of the same shape, loaded from outside:
	// the TPM does not let it be authorized, so its credential stays shut.
	soft, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	softPub := catalog.TransferTemplate(catalog.TransferPolicy(tk.pkName.Buffer))
	softPub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: soft.X.FillBytes(make([]byte, 32))}, Y: tpm2.TPM2BECCParameter{Buffer: soft.Y.FillBytes(make([]byte, 32))}})
	softFile := peerFileFor(t, d.certs, softPub, tk.pkName.Buffer)
	sv := f.attestPeer(t, d, id, softFile, softFile)
	if !sv.Pass || sv.PeerChallenge == nil {
		t.Fatalf("%+v", sv)
	}
	d.parked(func() {
		ext, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(softPub), Hierarchy: tpm2.TPMRHOwner}).Execute(env.TPM)
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.activateWith(sv.PeerChallenge.EKCertSHA256, tk.admin(ext.ObjectHandle, ext.Name), sv.PeerChallenge.CredentialBlob, sv.PeerChallenge.CredentialSecret)
		if err == nil {
			t.Fatal("a software transfer key loaded from outside activated the residency credential")
		}
		if strings.Contains(err.Error(), "MEMORY") {
			t.Fatalf("the attempt failed for want of TPM memory, not by the TPM's refusal: %v", err)
		}
		t.Logf("a software transfer key: %v", err)
		_, _ = (tpm2.FlushContext{FlushHandle: ext.ObjectHandle}).Execute(env.TPM)
		// Nor does the resident key open another key's credential.
		if _, err := d.activateWith(sv.PeerChallenge.EKCertSHA256, tk.admin(tk.t, tk.tName), sv.PeerChallenge.CredentialBlob, sv.PeerChallenge.CredentialSecret); err == nil || strings.Contains(err.Error(), "MEMORY") {
			t.Fatalf("the resident transfer key and the credential made for another: %v", err)
		}
	})
	if _, err := f.e.ProvePeer(ctx, fleetapi.PeerProveRequest{DeviceID: id, Peer: softFile, ExpiresAt: sv.PeerChallenge.ExpiresAt, Answer: make([]byte, catalog.ChallengeAnswerSize)}); !errors.Is(err, fleet.ErrRejected) {
		t.Fatalf("a guessed answer: %v", err)
	}

	var secret []byte
	d.parked(func() {
		secret, err = d.activateWith(pc.EKCertSHA256, tk.admin(tk.t, tk.tName), pc.CredentialBlob, pc.CredentialSecret)
	})
	if err != nil {
		t.Fatalf("the resident transfer key: %v", err)
	}
	if !strings.HasPrefix(string(secret), string(catalog.ChallengePrefix)) {
		t.Fatal("the credential is not a residency challenge")
	}
	answer := secret[len(catalog.ChallengePrefix):]
	good := fleetapi.PeerProveRequest{DeviceID: id, Peer: peer, ExpiresAt: pc.ExpiresAt, Answer: answer}
	for name, bad := range map[string]fleetapi.PeerProveRequest{
		"another file":   {DeviceID: id, Peer: softFile, ExpiresAt: pc.ExpiresAt, Answer: answer},
		"another expiry": {DeviceID: id, Peer: peer, ExpiresAt: pc.ExpiresAt.Add(time.Hour), Answer: answer},
	} {
		if _, err := f.e.ProvePeer(ctx, bad); !errors.Is(err, fleet.ErrRejected) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := f.e.ProvePeer(ctx, fleetapi.PeerProveRequest{DeviceID: strings.Repeat("ab", 32), Peer: peer, ExpiresAt: pc.ExpiresAt, Answer: answer}); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("another device: %v", err)
	}
	saved := f.now
	f.now = pc.ExpiresAt
	if _, err := f.e.ProvePeer(ctx, good); !errors.Is(err, fleet.ErrRejected) {
		t.Fatalf("after expiry: %v", err)
	}
	if _, err := f.st.Peer(ctx, id); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("a refused answer registered a transfer key: %v", err)
	}
	f.now = saved
	reg, err := f.e.ProvePeer(ctx, good)
	if err != nil || reg.ParentName != hex.EncodeToString(tk.tName.Buffer) || reg.PKName != hex.EncodeToString(tk.pkName.Buffer) {
		t.Fatalf("%+v %v", reg, err)
	}
	stored, err := f.st.Peer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var served struct {
		EKCertificates [][]byte `json:"ek_certificates"`
	}
	if err := json.Unmarshal(stored.Identity, &served); err != nil || len(served.EKCertificates) != 1 {
		t.Fatalf("the served peer file: %v %d certificates", err, len(served.EKCertificates))
	}
}

// TestDupApproval: the endpoint's approval is exactly officer.DupApproved
// of the registered PK policy, the key and the registered transfer key,
// signed by its authority key; it is refused without an authority key,
// for a device that registered nothing, for a bad name, once the last
// passing attestation is older than the window, after the class's policy
// changed, after a failing attestation, and for a revoked device.
func TestDupApproval(t *testing.T) {
	env := swtpmtest.Start(t)
	f := newAuthorityFleet(t, env, true)
	d := newReviewDevice(t, env)
	id, err := d.enroll(f.reviewFleet, "gateway", d.certs)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keyName := "000b" + strings.Repeat("5a", 32)
	req := fleetapi.DupApprovalRequest{ObjectName: keyName}
	refused := func(what, want string) {
		t.Helper()
		_, err := f.e.ApproveDuplication(ctx, id, req)
		if !errors.Is(err, fleet.ErrRejected) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v", what, err)
		}
	}
	refused("nothing registered", "registered no transfer key")

	tk := newTransferKey(t, env.TPM)
	peer := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer)
	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	f.registerPeer(t, d, id, tk, peer)

	ap, err := f.e.ApproveDuplication(ctx, id, req)
	if err != nil {
		t.Fatal(err)
	}
	got := new(policy.Approval)
	if err := got.UnmarshalJSON(ap.Approval); err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(&f.key.PublicKey); err != nil {
		t.Fatalf("the approval does not verify with the authority key: %v", err)
	}
	pkPolicy, _ := hex.DecodeString(testPKPolicy)
	name, _ := hex.DecodeString(keyName)
	if want := officer.DupApproved(pkPolicy, name, tk.tName.Buffer); hex.EncodeToString(got.ApprovedPolicy) != hex.EncodeToString(want) || string(got.PolicyRef) != string(officer.DupRef) {
		t.Fatalf("approved %x ref %q, want %x %q", got.ApprovedPolicy, got.PolicyRef, want, officer.DupRef)
	}

	for _, bad := range []string{"", "000b00", "0004" + strings.Repeat("5a", 32), strings.Repeat("zz", 34)} {
		if _, err := f.e.ApproveDuplication(ctx, id, fleetapi.DupApprovalRequest{ObjectName: bad}); !errors.Is(err, fleet.ErrRejected) {
			t.Fatalf("object name %q: %v", bad, err)
		}
	}
	f.now = f.now.Add(time.Hour + time.Second)
	refused("a stale attestation", "attest it again")
	f.attest(t, d, id, nil)
	if _, err := f.e.ApproveDuplication(ctx, id, req); err != nil {
		t.Fatalf("after attesting again: %v", err)
	}
	f.now = f.now.Add(time.Second)
	f.setGolden(t, d, "gateway")
	refused("the class's policy changed", "policy changed")
	f.now = f.now.Add(time.Second)
	d.extend(7, make([]byte, 32))
	if v := f.attest(t, d, id, nil); v.Pass {
		t.Fatal("an extended PCR 7 passed")
	}
	refused("a failing attestation", "did not pass")
	if err := f.st.Revoke(ctx, id, f.now); err != nil {
		t.Fatal(err)
	}
	refused("a revoked device", "revoked")

	bare := newAuthorityFleet(t, env, false)
	if _, err := bare.e.ApproveDuplication(ctx, id, req); !errors.Is(err, fleet.ErrRejected) {
		t.Fatalf("no authority key: %v", err)
	}
}

func hasReason(v fleetapi.Verdict, code string) bool {
	for _, r := range v.Reasons {
		if r.Code == code {
			return true
		}
	}
	return false
}

// peerFixture is an authority fleet with one device enrolled in class
// gateway and a transfer key resident in its TPM.
type peerFixture struct {
	*authorityFleet
	env *swtpmtest.Env
	d   *reviewDevice
	id  string
	tk  *transferKey
}

func newPeerFixture(t *testing.T) *peerFixture {
	t.Helper()
	env := swtpmtest.Start(t)
	f := newAuthorityFleet(t, env, true)
	d := newReviewDevice(t, env)
	id, err := d.enroll(f.reviewFleet, "gateway", d.certs)
	if err != nil {
		t.Fatal(err)
	}
	return &peerFixture{authorityFleet: f, env: env, d: d, id: id, tk: newTransferKey(t, env.TPM)}
}

// answer attests with peer in the quote and activates the residency
// credential the pass carries, as the device's TPM does: the challenge,
// and the credential's secret (prefix and answer).
func (f *authorityFleet) answer(t *testing.T, d *reviewDevice, id string, tk *transferKey, peer []byte) (*fleetapi.PeerChallenge, []byte) {
	t.Helper()
	v := f.attestPeer(t, d, id, peer, peer)
	if !v.Pass || v.PeerChallenge == nil {
		t.Fatalf("%+v", v)
	}
	pc := v.PeerChallenge
	var secret []byte
	var err error
	d.parked(func() {
		secret, err = d.activateWith(pc.EKCertSHA256, tk.admin(tk.t, tk.tName), pc.CredentialBlob, pc.CredentialSecret)
	})
	if err != nil {
		t.Fatal(err)
	}
	return pc, secret
}

// registerPeer registers tk for device d through a passing attestation
// and the residency answer.
func (f *authorityFleet) registerPeer(t *testing.T, d *reviewDevice, id string, tk *transferKey, peer []byte) fleetapi.PeerRegistration {
	t.Helper()
	pc, secret := f.answer(t, d, id, tk, peer)
	reg, err := f.e.ProvePeer(context.Background(), fleetapi.PeerProveRequest{DeviceID: id, Peer: peer, ExpiresAt: pc.ExpiresAt, Answer: secret[len(catalog.ChallengePrefix):]})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestPeerPKPolicyIsTheOperators: the PK policy an approval is signed
// over is one the operator set for the class, never the device's choice
// (found by review: a device registered PolicyAuthValue's digest, and the
// endpoint's approval then let root on a sender duplicate after a bad
// boot); a class that names none registers nothing; hex that is not
// lower-case is refused; and a registration made before the class's
// policy changed is not approved over (found by review: it outlived the
// golden values it was vouched for under).
func TestPeerPKPolicyIsTheOperators(t *testing.T) {
	p := newPeerFixture(t)
	f, d, id, tk := p.authorityFleet, p.d, p.id, p.tk
	ctx := context.Background()
	pkName := hex.EncodeToString(tk.pkName.Buffer)
	weak, err := policy.Policy{policy.AuthValue{}}.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	for what, file := range map[string][]byte{
		"the device's own PK policy": peerFileWith(t, d.certs, tk.pub, pkName, hex.EncodeToString(weak)),
		"upper-case hex":             peerFileWith(t, d.certs, tk.pub, strings.ToUpper(pkName), testPKPolicy),
	} {
		if v := f.attestPeer(t, d, id, file, file); !v.Pass || v.PeerChallenge != nil || !hasReason(v, fleetapi.CodePeerRefused) {
			t.Fatalf("%s: %+v", what, v)
		}
	}
	// A class without PK policies registers nothing.
	vals := map[int]string{}
	for i := 0; i <= 7; i++ {
		vals[i] = hex.EncodeToString(d.pcr(i))
	}
	if err := f.st.SetPolicy(ctx, fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{"sha256": vals}, UpdatedAt: f.now}); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(time.Second)
	peer := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer)
	if v := f.attestPeer(t, d, id, peer, peer); !v.Pass || v.PeerChallenge != nil || !hasReason(v, fleetapi.CodePeerRefused) {
		t.Fatalf("a class without PK policies: %+v", v)
	}

	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	f.registerPeer(t, d, id, tk, peer)
	req := fleetapi.DupApprovalRequest{ObjectName: "000b" + strings.Repeat("5a", 32)}
	if _, err := f.e.ApproveDuplication(ctx, id, req); err != nil {
		t.Fatal(err)
	}
	// The operator replaces the golden values; the device passes the new
	// ones, but its registration predates them.
	f.now = f.now.Add(time.Minute)
	d.extend(7, make([]byte, 32))
	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	if v := f.attest(t, d, id, nil); !v.Pass {
		t.Fatalf("%+v", v)
	}
	if _, err := f.e.ApproveDuplication(ctx, id, req); !errors.Is(err, fleet.ErrRejected) || !strings.Contains(err.Error(), "after it registered") {
		t.Fatalf("a registration older than the policy: %v", err)
	}
	f.now = f.now.Add(time.Second)
	f.registerPeer(t, d, id, tk, peer)
	if _, err := f.e.ApproveDuplication(ctx, id, req); err != nil {
		t.Fatalf("registered again: %v", err)
	}
}

// TestProveAfterPolicyChange (found by review): a residency challenge
// issued under the class's old golden values and answered after the
// operator replaced them registers nothing: the answer binds the policy as
// it was.
func TestProveAfterPolicyChange(t *testing.T) {
	p := newPeerFixture(t)
	f, d, id, tk := p.authorityFleet, p.d, p.id, p.tk
	ctx := context.Background()
	f.setGolden(t, d, "gateway") // old golden values (boot A)
	f.now = f.now.Add(time.Second)
	peer := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer)
	pc, secret := f.answer(t, d, id, tk, peer)
	// The operator withdraws boot A's values (boot B now).
	f.now = f.now.Add(10 * time.Second)
	d.extend(7, make([]byte, 32))
	f.setGolden(t, d, "gateway")
	policyAt := f.now
	// The answer to the old challenge, after the change.
	f.now = f.now.Add(10 * time.Second)
	if _, err := f.e.ProvePeer(ctx, fleetapi.PeerProveRequest{DeviceID: id, Peer: peer, ExpiresAt: pc.ExpiresAt, Answer: secret[len(catalog.ChallengePrefix):]}); !errors.Is(err, fleet.ErrRejected) {
		t.Fatalf("an answer vouched for under the policy changed at %s: %v", policyAt, err)
	}
	if _, err := f.st.Peer(ctx, id); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("registered: %v", err)
	}
}

// TestRegistrationDatedWhenVouched (found by review): a registration is
// dated when its file was vouched for, not when the answer landed (on a
// replica whose clock runs ahead): a later policy change then voids it.
func TestRegistrationDatedWhenVouched(t *testing.T) {
	p := newPeerFixture(t)
	f, d, id, tk := p.authorityFleet, p.d, p.id, p.tk
	ctx := context.Background()
	f.setGolden(t, d, "gateway")
	f.now = f.now.Add(time.Second)
	peer := peerFileFor(t, d.certs, tk.pub, tk.pkName.Buffer)
	real := f.now
	pc, secret := f.answer(t, d, id, tk, peer)
	// The answer lands on a replica whose clock runs 100s ahead (the lead
	// is bounded by the nonce TTL: the expiry is checked on that clock).
	f.now = real.Add(100 * time.Second)
	if _, err := f.e.ProvePeer(ctx, fleetapi.PeerProveRequest{DeviceID: id, Peer: peer, ExpiresAt: pc.ExpiresAt, Answer: secret[len(catalog.ChallengePrefix):]}); err != nil {
		t.Fatal(err)
	}
	f.now = real.Add(30 * time.Second) // back on a correct replica
	d.extend(7, make([]byte, 32))
	f.setGolden(t, d, "gateway") // values withdrawn
	f.now = f.now.Add(time.Second)
	if v := f.attest(t, d, id, nil); !v.Pass {
		t.Fatalf("%+v", v)
	}
	if _, err := f.e.ApproveDuplication(ctx, id, fleetapi.DupApprovalRequest{ObjectName: "000b" + strings.Repeat("5a", 32)}); !errors.Is(err, fleet.ErrRejected) || !strings.Contains(err.Error(), "after it registered") {
		t.Fatalf("a registration that preceded the policy change: %v", err)
	}
}
