package agent

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// TestNoCopyOfThePKSatisfiesPolicySecret: A2 on B tries to satisfy
// PolicySecret(B's PK name) with an object it controls that has the PK's
// name: the PK's public area loaded alone (NULL and owner hierarchies, with
// a password, an empty HMAC session, and even with provd's real PK policy
// session incl. the authValue), and with a private part of its own.
func TestNoCopyOfThePKSatisfiesPolicySecret(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	b := provisioned(t, env)
	if _, err := b.PeerIdentity(ctx); err != nil {
		t.Fatal(err)
	}
	var in pkInputs
	if err := b.st.View(ctx, func(tx *store.Tx) (err error) { in, err = b.readPKInputs(tx); return }); err != nil {
		t.Fatal(err)
	}
	blob, err := tpm.UnmarshalBlob(in.blob)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := blob.Public.Contents()
	if err != nil {
		t.Fatal(err)
	}
	tp := env.TPM
	try := func(what string, h tpm2.TPMHandle, name tpm2.TPM2BName, auth tpm2.Session) {
		t.Helper()
		ps, err := tp.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		defer ps.Close()
		err = ps.PolicySecretOf(tpm.Object{Handle: h, Name: name}, auth)
		if err == nil {
			t.Errorf("%s satisfied PolicySecret with the PK's name", what)
			return
		}
		t.Logf("%s: %v", what, err)
	}
	for _, hier := range []tpm2.TPMHandle{tpm2.TPMRHNull, tpm2.TPMRHOwner} {
		rsp, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(*pub), Hierarchy: hier}).Execute(tp)
		if err != nil {
			t.Logf("LoadExternal public-only in %#x: %v", hier, err)
			continue
		}
		wantName, _ := tpm2.ObjectName(pub)
		if !bytes.Equal(rsp.Name.Buffer, wantName.Buffer) {
			t.Fatal("name differs")
		}
		try("public-only copy, empty password", rsp.ObjectHandle, rsp.Name, tpm2.PasswordAuth(nil))
		try("public-only copy, empty HMAC session", rsp.ObjectHandle, rsp.Name, tpm2.HMAC(tpm2.TPMAlgSHA256, 16))
		// Even provd's own PK policy session (with the authValue, which A2 lacks).
		err = b.withLoadedPK(in, func(l *loadedPK) error {
			return b.withPKPolicy(l, tpm2.TPMCCPolicySecret, func(s tpm2.Session) error {
				try("public-only copy, provd's own PK policy session", rsp.ObjectHandle, rsp.Name, s)
				return nil
			})
		})
		if err != nil {
			t.Logf("with provd's PK session: %v", err)
		}
		tp.Flush(rsp.ObjectHandle)
	}
	// With a private part of A2's own: the PK's unique is not A2's key, and
	// the PK is fixedTPM.
	k, _ := ecdh.P256().GenerateKey(rand.Reader)
	sens := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC, AuthValue: tpm2.TPM2BAuth{Buffer: []byte("a2")},
		Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: k.Bytes()})}
	if rsp, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(*pub), InPrivate: tpm2.New2B(sens), Hierarchy: tpm2.TPMRHNull}).Execute(tp); err == nil {
		try("the PK's public area with A2's private part", rsp.ObjectHandle, rsp.Name, tpm2.PasswordAuth([]byte("a2")))
		tp.Flush(rsp.ObjectHandle)
	} else {
		t.Logf("LoadExternal PK public + own private: %v", err)
	}
	// Same with fixedTPM/fixedParent cleared: loads, but another name.
	mod := *pub
	mod.ObjectAttributes.FixedTPM, mod.ObjectAttributes.FixedParent = false, false
	if rsp, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(mod), InPrivate: tpm2.New2B(sens), Hierarchy: tpm2.TPMRHNull}).Execute(tp); err == nil {
		wantName, _ := tpm2.ObjectName(pub)
		if bytes.Equal(rsp.Name.Buffer, wantName.Buffer) {
			t.Errorf("a non-fixedTPM copy has the PK's name")
		}
		t.Logf("non-fixedTPM copy loaded (unique not checked against the private?) under another name")
		tp.Flush(rsp.ObjectHandle)
	} else {
		t.Logf("LoadExternal non-fixed copy with own private: %v", err)
	}
}
