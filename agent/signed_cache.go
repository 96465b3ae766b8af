package agent

import (
	"crypto/sha256"

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
// blob parsed.
func (c *signedCache) parse(b []byte) (*policy.SignedPolicy, error) {
	sum := sha256.Sum256(b)
	if c.sp != nil && c.sum == sum {
		return c.sp, nil
	}
	sp, err := policy.ParseSignedPolicy(b)
	if err != nil {
		return nil, err
	}
	c.sum, c.sp = sum, sp
	return sp, nil
}

func (c *signedCache) reset() { c.sp = nil }
