package fwhook_test

import (
	"bytes"
	"crypto"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// recordingSigner keeps every signature the officer makes, as an
// interposer on the bus sees them in TPM2_PolicySigned.
type recordingSigner struct {
	crypto.Signer
	sigs [][]byte
}

func (r *recordingSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := r.Signer.Sign(rand, digest, opts)
	r.sigs = append(r.sigs, sig)
	return sig, err
}

// TestAnchorWriteRefused: another local process, holding everything on the
// device but the officer's key, tries every way to write the anchor; the
// TPM refuses each, and the hook still verifies the genuine signer only.
func TestAnchorWriteRefused(t *testing.T) {
	f := newFixture(t)
	rec := &recordingSigner{Signer: f.officer}
	f.pin(t)
	if _, err := fwhook.Set(f.env.TPM, fwhook.SetRequest{Officer: rec, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath()}); err != nil {
		t.Fatal(err)
	}
	if len(rec.sigs) != 1 {
		t.Fatalf("%d officer signatures", len(rec.sigs))
	}
	tp := f.env.TPM
	x, err := tp.ReadNVPublic(fwhook.AnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	evil := newKey(t)
	evilName, _ := policy.SignerName(evil.Public())
	officerName, _ := policy.SignerName(f.officer.Public())
	content, err := fwhook.Anchor{Officer: officerName, Class: "gateway", Current: evilName}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	write := func(auth tpm2.AuthHandle) error {
		_, err := (tpm2.NVWrite{AuthHandle: auth, NVIndex: tpm2.NamedHandle{Handle: x.Handle, Name: x.Name}, Data: tpm2.TPM2BMaxNVBuffer{Buffer: content}}).Execute(tp)
		return err
	}
	// The index's own (empty) password: no AUTHWRITE.
	if err := write(tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: tpm2.PasswordAuth(nil)}); err == nil {
		t.Fatal("NV_Write with the index's password succeeded")
	}
	// The owner (empty authorization): no OWNERWRITE.
	if err := write(tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}); err == nil {
		t.Fatal("NV_Write as the owner succeeded")
	}
	// A signed write by a key of the attacker's own.
	evilPub, _ := policy.SignerPublic(evil.Public())
	err = tp.NVWriteSigned(x, content, evilPub, fwhook.AnchorRef, func(d []byte) (tpm2.TPMTSignature, error) { return policy.SignDigest(evil, d) })
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("a write signed by another key: %v", err)
	}
	// The officer's signature recorded off the bus, replayed for the
	// attacker's content: bound to the old session's nonce and the old
	// write's cpHash.
	officerPub, _ := policy.SignerPublic(f.officer.Public())
	sig := tpmECDSA(t, rec.sigs[0])
	err = tp.NVWriteSigned(x, content, officerPub, fwhook.AnchorRef, func([]byte) (tpm2.TPMTSignature, error) { return sig, nil })
	if err == nil {
		t.Fatal("a replayed officer signature wrote the anchor")
	}
	in, err := fwhook.Read(tp)
	if err != nil || !bytes.Equal(in.Current, mustName(t, f.signer.Public())) {
		t.Fatalf("anchor after the attempts: %+v, %v", in, err)
	}
	if _, err := f.verify(f.manifest(t, evil, 1, "gateway"), false); !errors.Is(err, firmware.ErrBadSignature) {
		t.Fatalf("the attacker's firmware: %v", err)
	}
}

// tpmECDSA turns an ASN.1 ECDSA signature into a TPMT_SIGNATURE.
func tpmECDSA(t *testing.T, der []byte) tpm2.TPMTSignature {
	t.Helper()
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		t.Fatal(err)
	}
	return tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: rs.R.Bytes()}, SignatureS: tpm2.TPM2BECCParameter{Buffer: rs.S.Bytes()}})}
}

func mustName(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	n, err := policy.SignerName(pub)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAnchorReplaced: with an empty owner authorization another process
// can undefine the anchor and define its own. One with other attributes
// is exit 22 and the failed state; one that imitates provd's exactly (its
// own officer) passes the hook, but PCR 12 then holds the attacker's
// manifest, never the good value a key is sealed to. With an owner
// authorization, the undefine itself is refused.
func TestAnchorReplaced(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	good := f.manifest(t, f.signer, 1, "gateway")
	tp := f.env.TPM
	evil := newKey(t)
	evilName := mustName(t, evil.Public())

	// An index of its own: the empty password writes it.
	if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	pub := tpm2.TPMSNVPublic{NVIndex: fwhook.AnchorHandle, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTOrdinary, AuthWrite: true, AuthRead: true, NoDA: true}, DataSize: uint16(fwhook.AnchorSize)}
	x, err := tp.DefineNV(pub)
	if err != nil {
		t.Fatal(err)
	}
	content, _ := fwhook.Anchor{Officer: mustName(t, evil.Public()), Class: "gateway", Current: evilName}.Marshal()
	if _, err := (tpm2.NVWrite{AuthHandle: tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex: tpm2.NamedHandle{Handle: x.Handle, Name: x.Name}, Data: tpm2.TPM2BMaxNVBuffer{Buffer: content}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	f.reboot()
	tp = f.env.TPM
	res, err := f.verify(f.manifest(t, evil, 1, "gateway"), false)
	if !errors.Is(err, firmware.ErrAnchorUntrusted) || res.OK || !bytes.Equal(f.pcr(t), failed) {
		t.Fatalf("an anchor of another shape: %+v, %v, PCR %x", res, err, f.pcr(t))
	}

	// A perfect imitation, with the attacker as officer.
	if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	zero := uint64(0)
	if _, err := fwhook.Set(tp, fwhook.SetRequest{Officer: evil, Signer: evil.Public(), Class: "gateway", CommitAuthPath: f.authPath(), Lowest: &zero, Unauthenticated: true}); err != nil {
		t.Fatal(err)
	}
	// Its firmware: other bytes (the same images signed by another key
	// would measure the same, being the genuine firmware).
	f.reboot()
	writeFile(t, filepath.Join(f.images, "efi/app.efi"), []byte("evil"))
	res, err = f.verify(f.manifest(t, evil, 1, "gateway"), false)
	if err != nil {
		t.Fatalf("imitation: %v", err)
	}
	writeFile(t, filepath.Join(f.images, "efi/app.efi"), []byte("app"))
	goodPCR := f.good(t, good)
	if bytes.Equal(f.pcr(t), goodPCR) {
		t.Fatal("the attacker's firmware left the good PCR value")
	}

	// The owner takes an authorization: the anchor can no longer be
	// undefined by whoever lacks it.
	f.reboot()
	tp = f.env.TPM
	f.pin(t) // the SRK is persistent: its creation needed the owner, its use does not
	ownerAuth := []byte("owner secret of the device maker")
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth: tpm2.TPM2BAuth{Buffer: ownerAuth}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	zero = 0 // the imitation's floor stands until the officer says otherwise
	if _, err := fwhook.Set(tp, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", OwnerAuth: ownerAuth, CommitAuthPath: f.authPath(), Lowest: &zero}); err != nil {
		t.Fatalf("set with the owner's authorization: %v", err)
	}
	if err := tp.UndefineNV(fwhook.AnchorHandle); !errors.Is(err, tpm.ErrBadAuth) {
		t.Fatalf("undefine without the owner's authorization: %v", err)
	}
	if err := tp.UndefineNVAuth(fwhook.AnchorHandle, []byte("guess")); !errors.Is(err, tpm.ErrBadAuth) {
		t.Fatalf("undefine with a wrong owner authorization: %v", err)
	}
	in, err := fwhook.Read(tp)
	if err != nil || !in.OwnerAuthSet {
		t.Fatalf("%+v %v", in, err)
	}
	if res, err := f.verify(good, false); err != nil || !res.OK || !res.OwnerAuthSet {
		t.Fatalf("good firmware with an owner authorization: %+v %v", res, err)
	}
	if !bytes.Equal(f.pcr(t), goodPCR) {
		t.Fatal("not the good PCR value")
	}
}

// TestCounterAttacks: the counter cannot be raised without its
// authorization, and a counter undefined and defined again by another
// process never comes back lower: the rollback check only gets stricter.
func TestCounterAttacks(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	if _, err := f.verify(f.manifest(t, f.signer, 4, "gateway"), true); err != nil {
		t.Fatal(err)
	}
	tp := f.env.TPM
	x, err := tp.ReadNVPublic(fwhook.CounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.Increment(fwhook.CounterHandle); err == nil {
		t.Fatal("the counter was incremented with the empty password")
	}
	if err := tp.IncrementAuth(x, bytes.Repeat([]byte{7}, 32)); !errors.Is(err, tpm.ErrBadAuth) {
		t.Fatalf("a wrong authorization: %v", err)
	}
	before, err := fwhook.Read(tp)
	if err != nil {
		t.Fatal(err)
	}
	// Redefined with the same shape and an authorization of the attacker's.
	if err := tp.UndefineNV(fwhook.CounterHandle); err != nil {
		t.Fatal(err)
	}
	evilAuth := bytes.Repeat([]byte{9}, 32)
	nx, err := tp.DefineNVAuth(fwhook.CounterPublic(false), evilAuth, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.IncrementAuth(nx, evilAuth); err != nil {
		t.Fatal(err)
	}
	after, err := fwhook.Read(tp)
	if err != nil {
		t.Fatal(err)
	}
	if after.Counter < before.Counter || after.Lowest < before.Lowest {
		t.Fatalf("a redefined counter went back: %d -> %d (lowest %d -> %d)", before.Counter, after.Counter, before.Lowest, after.Lowest)
	}
	if _, err := f.verify(f.manifest(t, f.signer, 3, "gateway"), false); !errors.Is(err, firmware.ErrRollback) {
		t.Fatalf("version 3 after the redefinition: %v", err)
	}
}

// TestHostileStateFiles: a FIFO at the measurement log does not hang the
// hook (a boot that never ends), and a symbolic link at the counter's
// authorization is not followed.
func TestHostileStateFiles(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	m := f.manifest(t, f.signer, 2, "gateway")
	if _, err := f.verify(m, false); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.logPath()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(f.logPath(), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := f.verify(m, false); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("verify with a FIFO at the log: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("verify hangs on a FIFO at the measurement log")
	}
	if fi, err := os.Lstat(f.logPath()); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the log after: %v %v", fi, err)
	}
	auth, err := os.ReadFile(f.authPath())
	if err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(f.dir, "elsewhere")
	if err := os.WriteFile(moved, auth, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.authPath()); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, f.authPath()); err != nil {
		t.Fatal(err)
	}
	f.reboot()
	if res, err := f.verify(f.manifest(t, f.signer, 3, "gateway"), true); err == nil || res.Committed {
		t.Fatalf("commit through a symbolic link: %+v %v", res, err)
	}
}
