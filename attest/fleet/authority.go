package fleet

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/officer"
)

// The endpoint as the fleet's duplication authority (docs/attestation.md,
// "Duplication approvals"). A key or a movable PK born --duplicable-by
// the endpoint's authority key moves to a peer only with the endpoint's
// approval of that key to that peer's transfer key T (officer.DupApproved,
// checked by the sender's TPM through PolicyAuthorize). The endpoint
// approves only a T that
//
//   - its device's AK vouched for: the peer identity file rode in a quote
//     (qualifying data fleetapi.PeerQualifying(nonce, file)) that passed
//     appraisal against golden values an operator set;
//   - is resident in the TPM the device enrolled: a credential to the
//     enrolled EK for T's name, which only that TPM with T loaded and
//     authorized through its PK opens (provd peer prove's);
//
// and only while the device's last attestation passed, recently, against
// the class's current policy. The PK policy in the approval is one the
// operator set for the class (Policy.PKPolicies), which the device's file
// must name: never a digest the device or the approving operator chose
// (found by review: a device registered PolicyAuthValue's digest, and the
// approval then moved a key from a sender on a bad boot; an earlier review:
// an approval over all zeros moved a PK on a bad boot).

// MaxPeerFile bounds a peer identity file: EK certificates and a public
// area are a few KB.
const MaxPeerFile = 64 << 10

// peerFile is the peer identity file, format 1, as provd peer identity
// writes it (api.PeerIdentity, which the endpoint cannot import: api links
// the TPM package; cli.TestFleetAuthority passes one from the other).
type peerFile struct {
	Format         int       `json:"format"`
	EKCertificates [][]byte  `json:"ek_certificates"`
	Parent         []byte    `json:"parent"`
	ParentName     string    `json:"parent_name"`
	PKName         string    `json:"pk_name"`
	PKPolicy       string    `json:"pk_policy"`
	Officer        string    `json:"officer"`
	CreatedAt      time.Time `json:"created_at"`
}

// checkPeerFile reads a peer identity file strictly and checks what the
// endpoint relies on: its transfer key exactly a provd transfer key bound
// to the PK the file names, under its stated name; a PK policy digest that
// is one; an officer's TPM name. It returns the file and T's name.
func checkPeerFile(b []byte) (peerFile, []byte, error) {
	var f peerFile
	bad := func(format string, args ...any) (peerFile, []byte, error) {
		return f, nil, rejected("peer identity: "+format, args...)
	}
	if len(b) > MaxPeerFile {
		return bad("%d bytes, at most %d", len(b), MaxPeerFile)
	}
	if err := strictjson.Decode(b, &f); err != nil {
		return bad("%v", err)
	}
	if f.Format != 1 {
		return bad("format %d, this endpoint reads 1", f.Format)
	}
	pub, err := parsePublic2B(f.Parent)
	if err != nil {
		return bad("the transfer key's public area: %v", err)
	}
	for what, v := range map[string]string{"pk_name": f.PKName, "pk_policy": f.PKPolicy, "officer": f.Officer, "parent_name": f.ParentName} {
		if strings.ToLower(v) != v {
			return bad("%s: lower-case hex", what)
		}
	}
	pkName, err := hex.DecodeString(f.PKName)
	if err != nil || len(pkName) != 34 {
		return bad("the PK's name")
	}
	if catalog.IsLegacyTransferKey(pub, pkName) {
		return bad("the transfer key was made by a provd before review 74; the device runs provd peer identity again")
	}
	if !catalog.IsTransferKey(pub, pkName) {
		return bad("the parent is not the transfer key of the PK it names")
	}
	name, err := tpm2.ObjectName(&pub)
	if err != nil || hex.EncodeToString(name.Buffer) != f.ParentName {
		return bad("the parent's name is not its public area's")
	}
	if pol, err := hex.DecodeString(f.PKPolicy); err != nil || len(pol) != sha256.Size || bytes.Equal(pol, make([]byte, sha256.Size)) {
		return bad("the PK policy digest (32 bytes, not zeros)")
	}
	if o, err := hex.DecodeString(f.Officer); err != nil || len(o) != 34 {
		return bad("the officer's name")
	}
	return f, name.Buffer, nil
}

// parsePublic2B reads a TPM2B_PUBLIC that must be all of b.
func parsePublic2B(b []byte) (tpm2.TPMTPublic, error) {
	p2b, err := unmarshalExact[tpm2.TPM2BPublic](b)
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	pub, err := p2b.Contents()
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	return *pub, nil
}

var peerProofLabel = []byte("provd fleet peer proof v1\x00")

// peerAnswer is the answer a residency challenge carries: not stored, but
// recomputed when the device answers, from what the challenge binds (the
// device, its peer file, the expiry) under the replicas' shared key.
//
// It binds the class's policy as it was when the file was vouched for (its
// UpdatedAt): an answer that arrives after the operator changed the policy
// registers nothing (found by review: a file vouched for under golden
// values withdrawn a minute later was registered after the change, and so
// dated after it).
func (e *Endpoint) peerAnswer(ctx context.Context, deviceID string, peer []byte, expires, policyUpdated time.Time) ([]byte, error) {
	key, err := e.nonceKey(ctx)
	if err != nil {
		return nil, err
	}
	ps := sha256.Sum256(peer)
	m := hmac.New(sha256.New, key)
	m.Write(peerProofLabel)
	m.Write([]byte(deviceID))
	m.Write(ps[:])
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(expires.UnixMilli())))
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(policyUpdated.UnixMilli())))
	return m.Sum(nil)[:catalog.ChallengeAnswerSize], nil
}

// peerChallenge answers a passing attestation that carried a peer file:
// a credential to the enrolled EK for T's name, or why not.
func (e *Endpoint) peerChallenge(ctx context.Context, d Device, p *Policy, pcrs map[string]map[int]string, peer []byte) (*fleetapi.PeerChallenge, *Reason, error) {
	if why := withhold(p, pcrs); why != "" {
		return nil, &Reason{Code: fleetapi.CodePeerRefused, Detail: why}, nil
	}
	f, tName, err := checkPeerFile(peer)
	if err != nil {
		return nil, &Reason{Code: fleetapi.CodePeerRefused, Detail: err.Error()}, nil
	}
	if why := pkPolicyAllowed(p, f.PKPolicy); why != "" {
		return nil, &Reason{Code: fleetapi.CodePeerRefused, Detail: why}, nil
	}
	ek, err := parsePublic(d.EKPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet: device %s: stored EK: %w", d.ID, err)
	}
	encap, err := tpm2.ImportEncapsulationKey(&ek)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet: device %s: stored EK: %w", d.ID, err)
	}
	// Milliseconds, as the answer binds it.
	expires := time.UnixMilli(e.now().Add(e.cfg.NonceTTL).UnixMilli()).UTC()
	answer, err := e.peerAnswer(ctx, d.ID, peer, expires, p.UpdatedAt)
	if err != nil {
		return nil, nil, err
	}
	secret := append(bytes.Clone(catalog.ChallengePrefix), answer...)
	defer clear(secret)
	blob, encSecret, err := tpm2.CreateCredential(e.cfg.Rand, encap, tName, secret)
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(d.EKCert)
	return &fleetapi.PeerChallenge{ParentName: hex.EncodeToString(tName), EKCertSHA256: hex.EncodeToString(sum[:]),
		CredentialBlob: blob, CredentialSecret: encSecret, ExpiresAt: expires}, nil, nil
}

// ProvePeer registers a device's transfer key once the device answered
// the residency challenge its passing attestation got: the answer must be
// the one the challenge carried (for this device, this peer file, this
// expiry), before the expiry. The file kept and served to senders names
// only the enrolled EK certificate.
func (e *Endpoint) ProvePeer(ctx context.Context, req fleetapi.PeerProveRequest) (fleetapi.PeerRegistration, error) {
	d, err := e.cfg.Store.Device(ctx, req.DeviceID)
	if err != nil {
		return fleetapi.PeerRegistration{}, err
	}
	if d.State != StateEnrolled {
		return fleetapi.PeerRegistration{}, rejected("device %s is %s", d.ID, d.State)
	}
	pol, err := e.policy(ctx, d.Class)
	if err != nil {
		return fleetapi.PeerRegistration{}, err
	}
	var updated time.Time
	if pol != nil {
		updated = pol.UpdatedAt
	}
	want, err := e.peerAnswer(ctx, d.ID, req.Peer, req.ExpiresAt, updated)
	if err != nil {
		return fleetapi.PeerRegistration{}, err
	}
	if !hmac.Equal(want, req.Answer) {
		return fleetapi.PeerRegistration{}, rejected("the answer is not the residency challenge's (another TPM, another transfer key, another challenge, or the class's policy changed since: attest peer again)")
	}
	if !e.now().Before(req.ExpiresAt) {
		return fleetapi.PeerRegistration{}, rejected("the residency challenge expired at %s: attest again", req.ExpiresAt.Format(time.RFC3339))
	}
	f, _, err := checkPeerFile(req.Peer)
	if err != nil {
		return fleetapi.PeerRegistration{}, err
	}
	if why := pkPolicyAllowed(pol, f.PKPolicy); why != "" {
		return fleetapi.PeerRegistration{}, rejected("%s", why)
	}
	f.EKCertificates = [][]byte{d.EKCert}
	served, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fleetapi.PeerRegistration{}, err
	}
	// Dated when the file was vouched for (the challenge's issue, which
	// the answer binds through its expiry), not when the answer came:
	// compared with the policy's last change, that is the time that counts
	// (found by review: an answer dated on arrival, or by a replica whose
	// clock runs ahead, post-dated a policy change it preceded).
	vouched := req.ExpiresAt.Add(-e.cfg.NonceTTL)
	p := Peer{DeviceID: d.ID, Identity: append(served, '\n'), ParentName: f.ParentName, PKName: f.PKName, PKPolicy: f.PKPolicy,
		RegisteredAt: vouched, PolicyAt: updated}
	if err := e.cfg.Store.PutPeer(ctx, p); err != nil {
		return fleetapi.PeerRegistration{}, err
	}
	return fleetapi.PeerRegistration{DeviceID: d.ID, ParentName: p.ParentName, PKName: p.PKName, PKPolicy: p.PKPolicy, RegisteredAt: p.RegisteredAt}, nil
}

// ApproveDuplication signs, with the endpoint's authority key, the
// approval of the key named req.ObjectName (or a movable PK's name) to
// device id's registered transfer key: only while the device is enrolled,
// its last attestation passed no longer than ApprovalMaxAge ago, after the
// class's policy last changed, against golden values an operator set
// (withhold), and only under the PK policy the device registered.
func (e *Endpoint) ApproveDuplication(ctx context.Context, id string, req fleetapi.DupApprovalRequest) (fleetapi.DupApproval, error) {
	if e.cfg.Authority == nil {
		return fleetapi.DupApproval{}, rejected("this endpoint has no duplication authority key")
	}
	name, err := hex.DecodeString(req.ObjectName)
	if err == nil {
		err = officer.CheckName(name)
	}
	if err != nil {
		return fleetapi.DupApproval{}, rejected("object_name: want a key's TPM name, 68 hex digits starting 000b (provd key pub NAME -o json)")
	}
	d, err := e.cfg.Store.Device(ctx, id)
	if err != nil {
		return fleetapi.DupApproval{}, err
	}
	if d.State != StateEnrolled {
		return fleetapi.DupApproval{}, rejected("device %s is %s", d.ID, d.State)
	}
	peer, err := e.cfg.Store.Peer(ctx, d.ID)
	if errors.Is(err, ErrNotFound) {
		return fleetapi.DupApproval{}, rejected("device %s has registered no transfer key (provd attest peer on it)", d.ID)
	}
	if err != nil {
		return fleetapi.DupApproval{}, err
	}
	last, err := e.cfg.Store.Appraisals(ctx, d.ID, 1)
	if err != nil {
		return fleetapi.DupApproval{}, err
	}
	if len(last) == 0 || !last[0].Pass {
		return fleetapi.DupApproval{}, rejected("device %s: its last attestation did not pass", d.ID)
	}
	switch age := e.now().Sub(last[0].At); {
	case age > e.cfg.ApprovalMaxAge:
		return fleetapi.DupApproval{}, rejected("device %s: its last passing attestation is %s old, at most %s: attest it again (provd attest now)", d.ID, age.Round(time.Second), e.cfg.ApprovalMaxAge)
	case age < -time.Minute:
		// Recorded by a replica whose clock runs ahead (found by
		// review: a future time passed the age check).
		return fleetapi.DupApproval{}, rejected("device %s: its last attestation is dated %s in the future: the replicas' clocks disagree", d.ID, (-age).Round(time.Second))
	}
	p, err := e.policy(ctx, d.Class)
	if err != nil {
		return fleetapi.DupApproval{}, err
	}
	if why := withhold(p, last[0].PCRs); why != "" {
		return fleetapi.DupApproval{}, rejected("device %s: %s", d.ID, why)
	}
	if last[0].At.Before(p.UpdatedAt) {
		return fleetapi.DupApproval{}, rejected("device %s: the class's policy changed after its last attestation: attest it again", d.ID)
	}
	// The registration too (found by review: a transfer key vouched for
	// under golden values since withdrawn stayed approvable).
	if peer.RegisteredAt.After(e.now().Add(time.Minute)) {
		return fleetapi.DupApproval{}, rejected("device %s: its transfer key's registration is dated in the future: the replicas' clocks disagree", d.ID)
	}
	// The version of the class's policy the file was vouched for, which
	// the answer bound: no clock decides (found by review: a replica whose
	// clock ran ahead dated a registration after a change it preceded).
	if !peer.PolicyAt.Equal(p.UpdatedAt) {
		return fleetapi.DupApproval{}, rejected("device %s: the class's policy changed after it registered its transfer key: provd attest peer on it again", d.ID)
	}
	if peer.RegisteredAt.Before(p.UpdatedAt) {
		return fleetapi.DupApproval{}, rejected("device %s: the class's policy changed after it registered its transfer key: provd attest peer on it again", d.ID)
	}
	if why := pkPolicyAllowed(p, peer.PKPolicy); why != "" {
		return fleetapi.DupApproval{}, rejected("device %s: %s", d.ID, why)
	}
	pkPolicy, err := hex.DecodeString(peer.PKPolicy)
	if err != nil {
		return fleetapi.DupApproval{}, fmt.Errorf("fleet: peer %s: stored PK policy: %w", d.ID, err)
	}
	parent, err := hex.DecodeString(peer.ParentName)
	if err != nil {
		return fleetapi.DupApproval{}, fmt.Errorf("fleet: peer %s: stored transfer key name: %w", d.ID, err)
	}
	ap, err := officer.ApproveDuplication(e.cfg.Authority, pkPolicy, name, parent)
	if err != nil {
		return fleetapi.DupApproval{}, rejected("%v", err)
	}
	b, err := ap.MarshalJSON()
	if err != nil {
		return fleetapi.DupApproval{}, err
	}
	return fleetapi.DupApproval{DeviceID: d.ID, ObjectName: req.ObjectName, PKName: peer.PKName, Approval: b, Peer: peer.Identity}, nil
}

// AuthorityPEM is the authority key's public part, PEM (PKIX).
func (e *Endpoint) AuthorityPEM() (string, error) {
	if e.cfg.Authority == nil {
		return "", errors.New("this endpoint has no duplication authority key")
	}
	der, err := x509.MarshalPKIXPublicKey(e.cfg.Authority.Public())
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// pkPolicyAllowed says why a PK policy digest may not be approved over
// for the class, "" when it may: it must be one the operator set.
func pkPolicyAllowed(p *Policy, digest string) string {
	if p == nil || len(p.PKPolicies) == 0 {
		return "the class names no PK policy its devices may register (provd fleet policy set --pk-policy, the fleet's policy_digest): the endpoint signs approvals over no digest a device chose"
	}
	if digest == authValueOnly {
		return "the PK policy is PolicyAuthValue's alone: it checks no platform state"
	}
	for _, d := range p.PKPolicies {
		if d == digest {
			return ""
		}
	}
	return fmt.Sprintf("PK policy %.16s… is not one the class's policy allows", digest)
}
