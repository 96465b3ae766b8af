package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Exit code 11 (ErrBadAuth) says a wrong value does not count against the
// TPM's dictionary-attack lockout: every object and index provd creates is
// noDA, and the TPM exempts the owner hierarchy (every permanent handle but
// TPM_RH_LOCKOUT, which provd never uses). Each kind of value provd
// presents, presented wrong, leaves TPM_PT_LOCKOUT_COUNTER where it was;
// the control, an object without noDA, shows that the counter would move.
func TestWrongValuesDoNotCountAgainstLockout(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	d := sha256.Sum256([]byte("head"))
	_, gx, blob, auth := gatedIndex(t, tp, testGatedHandle, d[:])
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	wrong := bytes.Clone(auth)
	wrong[0] ^= 1
	ownerAuth := []byte("the owner's value")
	setOwner := func(old, v []byte) error {
		_, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(old)},
			NewAuth: tpm2.TPM2BAuth{Buffer: v}}).Execute(bus.Next)
		return err
	}
	if err := setOwner(nil, ownerAuth); err != nil {
		t.Fatal(err)
	}
	// Before the index's undefine at the end, which uses the empty value.
	t.Cleanup(func() {
		if err := setOwner(ownerAuth, nil); err != nil {
			t.Error(err)
		}
	})
	indexAuth := []byte("the index's value")
	x, err := tp.DefineNVAuth(tpm.AuthorizerPublic(testGatedAuthorizer, false), indexAuth, ownerAuth)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.UndefineNVAuth(x.Handle, ownerAuth)
	nonce := sha256.Sum256([]byte("nonce"))

	for _, c := range []struct {
		name string
		use  func() error
	}{
		{"the AK's value (TPM2_Quote)", func() error {
			ak, err := tp.Load(srk, nil, blob)
			if err != nil {
				t.Fatal(err)
			}
			defer tp.Flush(ak.Handle)
			_, _, err = tp.Quote(ak, wrong, nonce[:], sharedAuthSel)
			return err
		}},
		{"a gate's value (TPM2_PolicySecret)", func() error {
			bad, err := tp.LoadGate(srk, blob, wrong)
			if err != nil {
				t.Fatal(err)
			}
			defer tp.Flush(bad.Handle)
			_, err = tp.PrepareGatedExtendOf(gx, bad, d[:])
			return err
		}},
		{"an index's value", func() error { return tp.ProveNVAuth(x, []byte("not the index's value")) }},
		{"the owner's value", func() error { return tp.UndefineNVAuth(x.Handle, []byte("not the owner's value")) }},
	} {
		before := swtpmtest.LockoutCounter(t, bus.Next)
		if err := c.use(); !errors.Is(err, tpm.ErrBadAuth) {
			t.Errorf("%s, wrong: %v, want ErrBadAuth", c.name, err)
		}
		if after := swtpmtest.LockoutCounter(t, bus.Next); after != before {
			t.Errorf("%s, wrong: the lockout counter went from %d to %d", c.name, before, after)
		}
	}

	// The control: a key without noDA, used with a wrong password.
	before := swtpmtest.LockoutCounter(t, bus.Next)
	k, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(ownerAuth)},
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: []byte("right")}}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme: tpm2.TPMAlgHMAC, Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256})}}),
		}),
	}).Execute(bus.Next)
	if err != nil {
		t.Fatal(err)
	}
	defer (tpm2.FlushContext{FlushHandle: k.ObjectHandle}).Execute(bus.Next)
	// The TPM answers RETRY until it can write the counter to NV.
	for range 100 {
		_, err = (tpm2.Hmac{Handle: tpm2.AuthHandle{Handle: k.ObjectHandle, Name: k.Name, Auth: tpm2.PasswordAuth([]byte("wrong"))},
			Buffer: tpm2.TPM2BMaxBuffer{Buffer: []byte("x")}, HashAlg: tpm2.TPMAlgSHA256}).Execute(bus.Next)
		if !errors.Is(err, tpm2.TPMRCRetry) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(err, tpm2.TPMRCAuthFail) {
		t.Fatalf("the control's wrong password: %v, want TPM_RC_AUTH_FAIL", err)
	}
	if after := swtpmtest.LockoutCounter(t, bus.Next); after != before+1 {
		t.Errorf("the control: the lockout counter went from %d to %d, want one more", before, after)
	}
}
