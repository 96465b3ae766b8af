package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1 changing the public area of `provd key import`'s TPM2_Import on its
// way in: the PK's policy session (session 1, salted to the pinned SRK,
// keyed by the PK's authValue) is refused first, and that is forged (exit
// 15), not an authorization failure (exit 11; found by review, which the
// first version of the mapping still answered); the honest import after
// it works.
func TestKeyImportChangedOnTheBusIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	ctx := context.Background()
	a := signingAgent(t, env)
	c := newCeremony(t, 3, 32)
	if _, err := a.ImportKEK(ctx, c.requestFor("kek", "unwrap")); err != nil {
		t.Fatal(err)
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := keywrap.Wrap(c.key, der)
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCImport {
			return nil, nil, false
		}
		ran = true
		cmd = bytes.Clone(cmd)
		off := 10 + 4 // header, parentHandle
		p := off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
		p += 2 + int(binary.BigEndian.Uint16(cmd[p:])) // encryptionKey
		n := int(binary.BigEndian.Uint16(cmd[p:]))     // objectPublic
		cmd[p+2+n-1] ^= 1
		rsp, err := next.Send(cmd)
		return rsp, err, true
	})
	_, err = a.ImportKey(ctx, api.KeyImportRequest{Name: "imported", KEK: "kek", Wrapped: wrapped})
	bus.Set(nil)
	if !ran {
		t.Fatal("no TPM2_Import went by")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("key import changed on the bus: exit %d (%v), want %d, forged", api.ExitCode(err), err, api.ExitIdentity)
	}
	// The honest import afterwards works.
	if _, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "imported", KEK: "kek", Wrapped: wrapped}); err != nil {
		t.Fatalf("honest import after: %v", err)
	}
}
