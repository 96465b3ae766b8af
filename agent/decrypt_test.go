package agent_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A ciphertext of the wrong size is refused before anything is sent (found
// by review: 100,000 bytes broke the transport for every later caller); a
// well-sized ciphertext that does not decrypt is the command's failure, not
// the TPM's failure mode (swtpm answers TPM_RC_FAILURE for that command
// only: exit 1, not 9, whose advice is to replace the TPM); the TPM keeps
// working after both.
func TestDecryptRefusesBadCiphertexts(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "oaep", Type: "rsa-2048", Usage: "decrypt"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 255, 257, 5000, 100000} {
		before := env.TPM.Stats()
		_, err := ag.Decrypt(ctx, "oaep", make([]byte, n), crypto.SHA256)
		if !errors.Is(err, api.ErrBadInput) || api.ExitCode(err) != api.ExitUsage {
			t.Errorf("%d bytes: %v (exit %d), want bad_input (2)", n, err, api.ExitCode(err))
		}
		// The key is loaded (cold) to learn its size; nothing carries the
		// ciphertext: no command is bigger than a load.
		if s := env.TPM.Stats().Sub(before); s.Commands > 20 {
			t.Errorf("%d bytes: %d TPM commands", n, s.Commands)
		}
	}
	// Encrypted to another key: the TPM cannot decrypt it.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &other.PublicKey, []byte("not for this key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ag.Decrypt(ctx, "oaep", ct, crypto.SHA256)
	if !errors.Is(err, tpm.ErrCommandFailed) || errors.Is(err, tpm.ErrFailureMode) || api.ExitCode(err) != api.ExitError {
		t.Fatalf("a ciphertext for another key: %v (exit %d), want tpm_command_failed (1)", err, api.ExitCode(err))
	}
	t.Logf("message: %v", err)
	// Still working: the right ciphertext decrypts.
	pub, _, err := ag.KeyPublic(ctx, "oaep")
	if err != nil {
		t.Fatal(err)
	}
	ct, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), []byte("for this key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := ag.Decrypt(ctx, "oaep", ct, crypto.SHA256); err != nil || string(pt) != "for this key" {
		t.Fatalf("after the failures: %q %v", pt, err)
	}
}

// A bit flipped in a sealed blob's TPM object is tampering (exit 14), as a
// flip in its envelope is, not an unnamed error (exit 1).
func TestSealedObjectFlipIsTampering(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s3cret")})
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(blob, &raw); err != nil {
		t.Fatal(err)
	}
	var obj []byte
	if err := json.Unmarshal(raw["object"], &obj); err != nil {
		t.Fatal(err)
	}
	obj[len(obj)-1] ^= 1 // inside the private area's encrypted sensitive part
	raw["object"], _ = json.Marshal(obj)
	flipped, _ := json.Marshal(raw)
	_, err = ag.Unseal(ctx, flipped)
	if !errors.Is(err, tpm.ErrIntegrity) || api.ExitCode(err) != api.ExitTampered {
		t.Fatalf("unseal of a flipped object: %v (exit %d), want tpm_integrity (14)", err, api.ExitCode(err))
	}
}
