package agent

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The premise of the anchor read by its expected name (issue 14): "the
// TPM keys the session's command HMAC with the name it holds, so it answers
// only if the index is that one". The session is an audit session beside
// the password authorization. A read naming the anchor by a name it does not
// have is refused (TPM_RC_BAD_AUTH, session 2): libtpms checks the HMAC of
// a non-authorizing session. A TPM that skipped that check would turn an
// ungated index replayed to the right value into a passing verify.
func TestAnchorReadWithAWrongNameIsRefused(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	x, err := env.TPM.ReadNVPublic(AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	var good []byte
	if err := a.t.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
		good, err = r.ReadExtendIndex(x)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	bogus := x
	bogus.Name = tpm2.TPM2BName{Buffer: append([]byte{0, 0x0b}, make([]byte, 32)...)}
	rand.Read(bogus.Name.Buffer[2:])
	var v []byte
	err = a.t.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
		v, err = r.ReadExtendIndex(bogus)
		return err
	})
	t.Logf("read naming the anchor %x (it is %x): value %x, err %v", bogus.Name.Buffer, x.Name.Buffer, v, err)
	if err == nil || bytes.Equal(v, good) {
		t.Fatal("the TPM answers a read that names the index wrongly")
	}
	if !errors.Is(err, tpm2.TPMRCBadAuth) {
		t.Logf("refused, but not with BAD_AUTH: %v", err)
	}
}
