package agent

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"fmt"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
)

// officerKey parses the officer's key recorded in the PK's state, or nil.
func (s pkState) officerKey() (crypto.PublicKey, error) {
	if s.Officer == "" {
		return nil, nil
	}
	return policy.ParsePublicKeyPEM([]byte(s.Officer))
}

// officerName is the hex TPM name of the officer's key, or "".
func officerName(k crypto.PublicKey) string {
	if k == nil {
		return ""
	}
	n, err := policy.SignerName(k)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(n)
}

// checkApproval verifies, offline and before anything is sent, that ap is the
// officer's approval of digest with ref: a clear refusal here, not a
// TPM_RC_POLICY_FAIL later.
func checkApproval(ap *policy.Approval, officer crypto.PublicKey, digest, ref []byte) error {
	if err := ap.Verify(officer); err != nil {
		return fmt.Errorf("%w: the approval is not the crypto officer's named at provisioning: %v", api.ErrNotPermitted, err)
	}
	if !bytes.Equal(ap.PolicyRef, ref) || !bytes.Equal(ap.ApprovedPolicy, digest) {
		return fmt.Errorf("%w: the approval is for something else (another recipe, key, destination or PK policy)", api.ErrNotPermitted)
	}
	return nil
}
