package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
)

// signedCache keeps the installed signed policy parsed and verified (its
// ECDSA or RSA signature checked in software), by the SHA-256 of its
// bytes: every operation under a signed PK policy reads the blob again, and
// the same bytes always parse to the same verified policy, so a hit is
// exactly what parsing would return. A new blob (policy install) has
// another hash; install also resets it. The TPM's part (LoadExternal,
// VerifySignature, PolicyAuthorize in each session) is not cached: the
// verification ticket would be sound to keep only as long as the owner
// hierarchy's proof, which TPM2_Clear changes, and provd does not track that.
//
// It is guarded by the Agent's lock, like everything an operation touches.
type signedCache struct {
	sum [sha256.Size]byte
	sp  *policy.SignedPolicy
}

// parse returns b parsed and verified, from the cache when b was the last
// blob parsed for the same PK policy record rec. Verified means: signed by
// rec's signer, for rec's policyRef and provd's counter, as install checked
// (found by review: the blob on disk was checked only against the key it
// carries, so a policy signed by anyone, over the current PCRs, made status
// say "satisfied" on a bad boot; the TPM refused its use all along).
func (c *signedCache) parse(b []byte, rec policyRecord) (*policy.SignedPolicy, error) {
	h := sha256.New()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(rec.Signer))
	h.Write([]byte{0})
	h.Write([]byte(rec.PolicyRef))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if c.sp != nil && c.sum == sum {
		return c.sp, nil
	}
	sp, err := policy.ParseSignedPolicy(b)
	if err != nil {
		return nil, err
	}
	signer, err := policy.ParsePublicKeyPEM([]byte(rec.Signer))
	if err != nil {
		return nil, fmt.Errorf("%w: the PK's policy signer: %v", api.ErrTampered, err)
	}
	want := CounterRef()
	switch {
	case sp.Verify(signer) != nil:
		return nil, fmt.Errorf("%w: not signed by the PK's policy signer", api.ErrTampered)
	case hex.EncodeToString(sp.PolicyRef) != rec.PolicyRef:
		return nil, fmt.Errorf("%w: for another device class or purpose (policyRef %q)", api.ErrTampered, sp.PolicyRef)
	case sp.Counter.Handle != want.Handle || string(sp.Counter.Name) != string(want.Name):
		return nil, fmt.Errorf("%w: it names another counter", api.ErrTampered)
	}
	c.sum, c.sp = sum, sp
	return sp, nil
}

func (c *signedCache) reset() { c.sp = nil }
