package agent

// Review of 5031379 (the state keeps the EK certificate first contact
// verified: identityRecord.EKCert, ekCertBySum, the ekCertificates
// fallback). Each test is an attack; it passes when provd holds.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func review4Identity(t *testing.T, ag *Agent) identityRecord {
	t.Helper()
	r, ok, err := ag.readIdentity(context.Background())
	if err != nil || !ok {
		t.Fatalf("identity record: %v %v", ok, err)
	}
	return r
}

func review4Sum(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// review4Refusal fails t unless err is a refusal that says what happened:
// not permitted, untrusted / identity mismatch / forged (15) or tampered
// (14); never a wrong authorization value (11), a policy (3) or a plain
// error (1).
func review4Refusal(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded", what)
		return
	}
	switch code := api.ExitCode(err); code {
	case api.ExitNotPermitted, api.ExitIdentity, api.ExitTampered:
		t.Logf("%s: refused, exit %d (%v): %v", what, code, api.ErrorKinds(err), err)
	default:
		t.Errorf("%s: exit %d (%v), want not permitted (5), identity (15) or tampered (14): %v", what, code, api.ErrorKinds(err), err)
	}
}

// A4 swaps the kept certificate for another TPM's genuine EK certificate
// (C's: public, it is in C's NV for anyone to read) on a device whose NV
// holds none (the certificate was given as a file at provision). The
// identity record still pins B's certificate by its sum. ekCertificates'
// fallback takes r.EKCert without comparing it with r.EKCertSHA256 or
// parsing it, so peer identity and attest identity present C's
// certificate as B's: a sender with both manufacturers' roots wraps to B's
// transfer key with a credential to C's EK, and the fleet enrols B's AK
// under C's device id (DeviceID(C's EK)). Nothing opens (B's TPM has not
// C's EK, C's TPM has not B's transfer key or AK), but the device now
// misrepresents which TPM it is, contrary to the threat model's row (A4
// "gains nothing": a changed copy "is not taken"), and what follows is
// reported as the TPM's fault (tpm_identity_mismatch, exit 15) instead of
// the state's (tampered, 14). provd holds when it presents only the
// certificate the record pins, or refuses the changed record as tampered.
func TestReview4SwappedKeptCertIsNotPresented(t *testing.T) {
	t.Parallel()
	envA := swtpmtest.Start(t)
	b := &swtpmtest.Bus{}
	envB := swtpmtest.Start(t, swtpmtest.WithBus(b))
	envC := swtpmtest.Start(t)
	ctx := context.Background()
	derB, derC := nvEKCert(t, envB), nvEKCert(t, envC)
	b.Set(hideEKCertNV)
	a := provisioned(t, envA)
	pb := testAgent(t, envB, &api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCert: derB, EKCA: caBundle(t, envB)})
	if r := review4Identity(t, pb); !bytes.Equal(r.EKCert, derB) || r.EKCertSHA256 != review4Sum(derB) {
		t.Fatal("first contact did not keep B's certificate")
	}
	// Control: the kept certificate is presented.
	peer, err := pb.PeerIdentity(ctx)
	if err != nil || len(peer.EKCertificates) != 1 || !bytes.Equal(peer.EKCertificates[0], derB) {
		t.Fatalf("control: peer identity %v", err)
	}

	// A4.
	editIdentity(t, pb, func(r *identityRecord) { r.EKCert = derC })

	presentsC := func(certs [][]byte) bool {
		for _, c := range certs {
			if bytes.Equal(c, derC) {
				return true
			}
		}
		return false
	}
	peer, perr := pb.PeerIdentity(ctx)
	if perr == nil && presentsC(peer.EKCertificates) {
		t.Errorf("peer identity presents another TPM's EK certificate (not the one the identity record pins, sum %.16s…) as this device's", review4Sum(derB))
	} else {
		t.Logf("peer identity: %v", perr)
	}
	enr, eerr := pb.AttestIdentity(ctx)
	if eerr == nil && presentsC(enr.EKCertificates) {
		t.Errorf("attest identity presents another TPM's EK certificate as this device's")
	}

	// What follows, with roots that vouch for both TPMs (a fleet's
	// manufacturer bundle).
	roots := append(caBundle(t, envB), caBundle(t, envC)...)
	if perr == nil && presentsC(peer.EKCertificates) {
		if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", Extractable: true}); err != nil {
			t.Fatal(err)
		}
		dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: roots})
		if err != nil {
			t.Logf("the sender refused: %v", err)
		} else {
			t.Logf("the sender wrapped k to B's transfer key with its credential to C's EK (%.16s…)", dup.EKCertSHA256)
			_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
			t.Logf("B's import: exit %d %v: %v", api.ExitCode(err), api.ErrorKinds(err), err)
			if err == nil {
				t.Error("B imported a duplicate whose credential is to C's EK")
			}
			nothingImported(t, pb)
		}
	}
	if eerr == nil && presentsC(enr.EKCertificates) {
		e := review4Fleet(t, roots)
		enr.Class = "gateway"
		got, err := e.Enroll(ctx, enr)
		if err != nil {
			t.Logf("the fleet refused: %v", err)
		} else {
			ekC, _ := attest.ParseEKCertificate(derC)
			pubC, _ := attest.EKPublic(ekC.PublicKey)
			t.Logf("the fleet enrolled B's AK as device %s (C's EK's id: %v)", got.DeviceID, got.DeviceID == fleet.DeviceID(pubC))
			_, err := pb.AttestActivate(ctx, got)
			t.Logf("B's activation: exit %d %v: %v", api.ExitCode(err), api.ErrorKinds(err), err)
			if err == nil {
				t.Error("B activated a credential made to C's EK")
			}
		}
	}
	b.Set(nil)
}

// A duplicate (or challenge, or delivery) made for this TPM's transfer key
// but with its credential to another TPM's EK (an attacker's peer file:
// B's transfer key, C's genuine certificate), and A4 putting C's
// certificate in B's state so that ekCertBySum takes it by the sum the
// duplicate names; with A1 also answering ReadPublic of the EK's handle
// with C's EK, so that tpm.EK's comparison passes. Nothing is imported,
// the refusal is not a wrong authorization value or a policy failure, and
// nothing is left in the TPM.
func TestReview4KeptCertOfAnotherTPMNamedByADuplicate(t *testing.T) {
	t.Parallel()
	for _, a1 := range []bool{false, true} {
		name := "A4 only"
		if a1 {
			name = "A4 and A1 answering the EK's ReadPublic with C's EK"
		}
		t.Run(name, func(t *testing.T) {
			envA := swtpmtest.Start(t)
			b := &swtpmtest.Bus{}
			envB := swtpmtest.Start(t, swtpmtest.WithBus(b))
			envC := swtpmtest.Start(t)
			ctx := context.Background()
			a, pb, peer := senderAndPeer(t, envA, envB)
			derC := nvEKCert(t, envC)
			forged := peer
			forged.EKCertificates = [][]byte{derC}
			dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: forged, Approval: approveDup(t, a, "k", forged), EKCA: caBundle(t, envC)})
			if err != nil {
				t.Fatal(err)
			}
			if dup.EKCertSHA256 != review4Sum(derC) {
				t.Fatal("the duplicate does not name C's certificate")
			}
			// A4 alone puts C's certificate in (a careless edit: the
			// record's sum still names B's, and the copy is not taken);
			// with A1, A4 rewrites both fields, so that provd takes C's
			// certificate and reaches the EK.
			editIdentity(t, pb, func(r *identityRecord) {
				r.EKCert = derC
				if a1 {
					r.EKCertSHA256 = review4Sum(derC)
				}
			})
			var answered atomic.Int32
			if a1 {
				ek, err := attest.ParseEKCertificate(derC)
				if err != nil {
					t.Fatal(err)
				}
				handle, _, _, _, err := ekPublic(ek.PublicKey)
				if err != nil {
					t.Fatal(err)
				}
				// C's EK as C's TPM states it (persistent there, or
				// the template's primary).
				cEK, flush, err := envC.TPM.EK(handle, mustEKPub(t, ek.PublicKey), mustEKTmpl(t, ek.PublicKey))
				if err != nil {
					t.Fatal(err)
				}
				rspC, err := (tpm2.ReadPublic{ObjectHandle: cEK.Handle}).Execute(envC.TPM)
				if ferr := flush(); ferr != nil {
					t.Fatal(ferr)
				}
				if err != nil {
					t.Fatal(err)
				}
				forgedRsp := review4ReadPublicResponse(rspC)
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic && len(cmd) >= 14 && binary.BigEndian.Uint16(cmd[0:2]) == uint16(tpm2.TPMSTNoSessions) &&
						tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == handle {
						answered.Add(1)
						return forgedRsp, nil, true
					}
					return nil, nil, false
				})
			}
			_, err = pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
			b.Set(nil)
			if a1 && answered.Load() == 0 {
				t.Error("A1 never answered the EK's ReadPublic")
			}
			review4Refusal(t, "B's import of a duplicate whose credential is to C's EK", err)
			nothingImported(t, pb)
			// B still imports what is really for it.
			honest, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: honest}); err != nil {
				t.Fatalf("the honest duplicate after the attack: %v", err)
			}
		})
	}
}

func mustEKPub(t *testing.T, key any) tpm2.TPMTPublic {
	t.Helper()
	_, pub, _, _, err := ekPublic(key)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func mustEKTmpl(t *testing.T, key any) tpm2.TPMTPublic {
	t.Helper()
	_, _, tmpl, _, err := ekPublic(key)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

// review4ReadPublicResponse marshals a TPM2_ReadPublic response (no
// sessions) from its parameters.
func review4ReadPublicResponse(r *tpm2.ReadPublicResponse) []byte {
	params := tpm2.Marshal(r.OutPublic)
	params = append(params, tpm2.Marshal(r.Name)...)
	params = append(params, tpm2.Marshal(r.QualifiedName)...)
	rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
	rsp = binary.BigEndian.AppendUint32(rsp, uint32(10+len(params)))
	rsp = binary.BigEndian.AppendUint32(rsp, 0)
	return append(rsp, params...)
}

// review4Ed25519Cert is a well-formed certificate for an Ed25519 key: no
// EK provd can salt to.
func review4Ed25519Cert(t *testing.T) []byte {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not an EK"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A4 writes bytes that are no EK certificate into ek_cert (junk, an empty
// DER sequence, a certificate for an Ed25519 key), and the operation
// names their sum (the duplicate's ek_cert_sha256 is the file's word; the
// officer's approval does not cover it): is the malformed copy reachable,
// and does it crash provd or misreport? Nothing is imported or left, the
// refusal is not a wrong value or a policy failure, and the honest
// duplicate imports afterwards. A challenge naming the sum likewise.
func TestReview4MalformedKeptCertWithMatchingSum(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	_, pb, dup := dupForPeer(t, b)
	ctx := context.Background()
	orig := review4Identity(t, pb)
	peer, err := pb.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		der  []byte
	}{
		{"junk", []byte("A4's certificate")},
		{"an empty sequence", []byte{0x30, 0x00}},
		{"a certificate for an Ed25519 key", review4Ed25519Cert(t)},
		{"a truncated certificate", orig.EKCert[:len(orig.EKCert)/2]},
	} {
		t.Run(c.name, func(t *testing.T) {
			editIdentity(t, pb, func(r *identityRecord) { r.EKCert = c.der })
			d := dup
			d.EKCertSHA256 = review4Sum(c.der)
			var err error
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("panic: %v", p)
					}
				}()
				_, err = pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: d})
			}()
			if err == nil {
				t.Fatal("imported with a malformed certificate")
			}
			if code := api.ExitCode(err); code == api.ExitBadAuth || code == api.ExitPolicy {
				t.Errorf("import: exit %d %v: %v", code, api.ErrorKinds(err), err)
			} else {
				t.Logf("import: exit %d %v: %v", code, api.ErrorKinds(err), err)
			}
			nothingImported(t, pb)
			ch := api.PeerChallenge{Format: api.ChallengeFormat, ParentName: peer.ParentName, EKCertSHA256: d.EKCertSHA256,
				CredentialBlob: dup.CredentialBlob, CredentialSecret: dup.CredentialSecret}
			_, err = pb.PeerProve(ctx, ch)
			if err == nil {
				t.Fatal("proved with a malformed certificate")
			}
			if code := api.ExitCode(err); code == api.ExitBadAuth || code == api.ExitPolicy {
				t.Errorf("prove: exit %d %v: %v", code, api.ErrorKinds(err), err)
			}
			if left := unheldLeft(t, pb); len(left) != 0 {
				t.Errorf("left: %v", left)
			}
		})
	}
	editIdentity(t, pb, func(r *identityRecord) { r.EKCert = orig.EKCert })
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("the honest duplicate: %v", err)
	}
}

// A4 makes the kept certificate the TPM's other EK's: swtpm holds an RSA
// 2048 (L-1) and an ECC P-384 (H-3) EK certificate, and first contact kept
// the RSA one. With the P-384 certificate kept, a duplicate naming the RSA
// certificate's sum reads NV and opens with the RSA EK; with the
// duplicate's sum changed to the P-384 certificate's (its credential is
// to the RSA EK), the P-384 EK at its own handle is used, and a credential
// to one EK never opens with the other: refused, not as a wrong value or
// a policy, nothing imported or left.
func TestReview4KeptCertOfTheOtherEK(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	_, pb, dup := dupForPeer(t, b)
	ctx := context.Background()
	peer, err := pb.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peer.EKCertificates) < 2 {
		t.Fatalf("the peer identity lists %d EK certificates, want the RSA and the P-384 one", len(peer.EKCertificates))
	}
	rsaDER := review4Identity(t, pb).EKCert
	if dup.EKCertSHA256 != review4Sum(rsaDER) {
		t.Fatal("the duplicate is not to the RSA EK")
	}
	var p384DER []byte
	for _, c := range peer.EKCertificates {
		if !bytes.Equal(c, rsaDER) {
			p384DER = c
		}
	}
	if p384DER == nil {
		t.Fatal("no second EK certificate")
	}
	for _, kept := range []string{"the RSA certificate kept, the P-384 one read from NV", "the P-384 certificate kept (A4)"} {
		t.Run(kept, func(t *testing.T) {
			if kept != "the RSA certificate kept, the P-384 one read from NV" {
				editIdentity(t, pb, func(r *identityRecord) { r.EKCert = p384DER })
			}
			wrong := dup
			wrong.EKCertSHA256 = review4Sum(p384DER)
			_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: wrong})
			if err == nil {
				t.Fatal("a credential to the RSA EK opened with the P-384 EK")
			}
			if code := api.ExitCode(err); code == api.ExitBadAuth || code == api.ExitPolicy {
				t.Errorf("a duplicate naming this TPM's P-384 EK certificate is reported as exit %d %v (the PCRs or a wrong value), want not permitted: %v", code, api.ErrorKinds(err), err)
			} else {
				t.Logf("exit %d %v: %v", code, api.ErrorKinds(err), err)
			}
			nothingImported(t, pb)
		})
	}
	reads := &ekCertNVReads{}
	b.Set(reads.hook)
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("the honest duplicate with the P-384 certificate kept: %v", err)
	}
	b.Set(nil)
	if reads.count() == 0 {
		t.Error("the RSA certificate was taken without NV")
	}
	if _, err := pb.Sign(ctx, "k", make([]byte, 32), api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
}

// States pinned before the certificate was kept (no ek_cert), and
// provision --force, which keeps the identity record: the old state works
// through NV, --force keeps the kept certificate, and neither the
// identity's JSON (provd tpm identity -o json) nor status carries the DER.
func TestReview4OldStatesForceAndOutput(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	_, pb, dup := dupForPeer(t, b)
	ctx := context.Background()
	orig := review4Identity(t, pb)
	// An old state: the field absent from the manifest's JSON.
	editIdentity(t, pb, func(r *identityRecord) { r.EKCert = nil })
	if err := pb.st.View(ctx, func(tx *store.Tx) error {
		raw, err := tx.GetRaw(recIdentity)
		if err == nil && bytes.Contains(raw, []byte("ek_cert\"")) {
			t.Errorf("an empty ek_cert is written: %s", raw)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	reads := &ekCertNVReads{}
	b.Set(reads.hook)
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("import on a state without ek_cert: %v", err)
	}
	b.Set(nil)
	if reads.count() == 0 {
		t.Error("a state without ek_cert did not read NV")
	}
	// provision --force keeps the record as it is (a kept certificate too).
	editIdentity(t, pb, func(r *identityRecord) { r.EKCert = orig.EKCert })
	if _, err := pb.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
		t.Fatal(err)
	}
	if r := review4Identity(t, pb); !bytes.Equal(r.EKCert, orig.EKCert) || r.EKCertSHA256 != orig.EKCertSHA256 {
		t.Error("provision --force changed the kept certificate")
	}
	// Output.
	id, err := pb.TPMIdentity(ctx, api.IdentityRequest{TrustOnFirstUse: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(id.EKCert) == 0 {
		t.Error("establish kept no certificate")
	}
	js, err := json.Marshal(id)
	if err != nil {
		t.Fatal(err)
	}
	b64, _ := json.Marshal(id.EKCert)
	if bytes.Contains(js, []byte("ek_cert\":")) || bytes.Contains(js, b64[1:len(b64)-1]) {
		t.Errorf("the identity's JSON carries the certificate: %s", js)
	}
	st, err := pb.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sj, _ := json.Marshal(st)
	if bytes.Contains(sj, b64[1:len(b64)-1]) {
		t.Error("status carries the certificate")
	}
}

// A1 hides the EK certificate indices on a TPM whose NV holds them, and
// answers them with another TPM's certificate: with the kept copy, the
// duplicate (which names the kept certificate's sum) needs no NV read, so
// hiding them changes nothing; the import works and the key signs.
func TestReview4A1OnTheNVIndicesWithAKeptCert(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	_, pb, dup := dupForPeer(t, b)
	ctx := context.Background()
	b.Set(hideEKCertNV)
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("import with NV hidden: %v", err)
	}
	b.Set(nil)
	if _, err := pb.Sign(ctx, "k", make([]byte, 32), api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The change's other promise, a certificate given as a file works for
// attestation, with the TPM's ECC P-384 EK certificate given (a TPM whose
// NV holds none; provision accepts it, TestTPMIdentityP384): attest
// identity now presents it, the fleet enrols the device to the P-384 EK,
// and attest activate must open the credential or refuse it as not
// permitted, not report the PCRs as unsatisfied (exit 3) or a wrong value.
// (It holds: the fleet refuses a P-384 EK at enrolment and says why.)
func TestReview4P384GivenAsAFileAttests(t *testing.T) {
	b := &swtpmtest.Bus{}
	envB := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	var p384 []byte
	for _, c := range tpm.EKCertIndices {
		if der, err := envB.TPM.ReadNV(c.Handle); err == nil {
			if ek, err := attest.ParseEKCertificate(der); err == nil {
				if _, _, _, desc, err := ekPublic(ek.PublicKey); err == nil && desc == "ECC P-384" {
					p384 = der
				}
			}
		}
	}
	if p384 == nil {
		t.Fatal("swtpm holds no ECC P-384 EK certificate")
	}
	b.Set(hideEKCertNV)
	defer b.Set(nil)
	pb := testAgent(t, envB, &api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCert: p384, EKCA: caBundle(t, envB)})
	enr, err := pb.AttestIdentity(ctx)
	if err != nil {
		t.Fatalf("attest identity: %v", err)
	}
	e := review4Fleet(t, caBundle(t, envB))
	enr.Class = "gateway"
	got, err := e.Enroll(ctx, enr)
	if err != nil {
		// The fleet enrols RSA 2048 and ECC P-256 EKs only: said so.
		t.Logf("the fleet refused: %v", err)
		return
	}
	act, err := pb.AttestActivate(ctx, got)
	if err != nil {
		if code := api.ExitCode(err); code == api.ExitPolicy || code == api.ExitBadAuth {
			t.Errorf("attest activate to the P-384 EK given as a file: exit %d %v: %v", code, api.ErrorKinds(err), err)
		} else {
			t.Logf("attest activate refused: exit %d %v: %v", code, api.ErrorKinds(err), err)
		}
		return
	}
	if _, err := e.Activate(ctx, fleetapi.ActivateRequest{DeviceID: got.DeviceID, Secret: act.Secret}); err != nil {
		t.Fatalf("the fleet's activation: %v", err)
	}
}

// review4Fleet is a fleet endpoint of the test's own (SQLite) whose EK
// roots are roots.
func review4Fleet(t *testing.T, roots []byte) *fleet.Endpoint {
	t.Helper()
	pool, err := attest.CertPoolFromPEM(roots)
	if err != nil {
		t.Fatal(err)
	}
	st, err := fleet.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return fleet.New(fleet.Config{Store: st, Roots: pool})
}
