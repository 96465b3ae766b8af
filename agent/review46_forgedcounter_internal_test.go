package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// review46IsCounterRead: a TPM2_NV_Read of the policy counter (authHandle,
// then the index).
func review46IsCounterRead(cmd []byte) bool {
	return len(cmd) >= 18 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) == PolicyCounterHandle
}

// review46InstalledPolicy is the installed signed policy's bytes in dir.
func review46InstalledPolicy(t *testing.T, a *Agent) []byte {
	t.Helper()
	var b []byte
	if err := a.st.View(context.Background(), func(tx *store.Tx) (err error) {
		b, err = tx.ReadBlob(blobPolicy)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

// Held: A1 forging the policy counter's value on its way back from the TPM
// at install, two ways: (a) saying the counter is already at the new
// policy's version, so that provd would skip the increments and report
// the install done while every older policy stays valid in the TPM; (b)
// saying it is at 0, so that provd would take a revoked version (c0, the
// counter at c0+1) and write it over the current one. Both refused
// (the read's answer is HMAC'd in an audit session salted to the pinned
// SRK): no success, the counter unmoved by (a) and (b), the installed
// policy unchanged, and the next honest install works.
func TestReview46ForgedCounterReadAtInstall(t *testing.T) {
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	a := review8Agent(t, env.TPM, t.TempDir()+"/state")
	_, c0, signed := review46Signed(t, a, "")
	cur := signed(c0+1, "")
	if _, err := a.InstallPolicy(ctx, cur); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		policy []byte
		say    uint64
	}{
		{"already at the version", signed(c0+3, ""), c0 + 3},
		{"at zero, a revoked version", signed(c0, ""), 0},
	} {
		forged := false
		bz.Set(swtpmtest.Tamper(review46IsCounterRead, func(cmd, rsp []byte) ([]byte, []byte) {
			// header(10) parameterSize(4) TPM2B size(2), then 8 bytes
			if len(rsp) < 24 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return nil, rsp
			}
			out := bytes.Clone(rsp)
			binary.BigEndian.PutUint64(out[16:24], c.say)
			forged = true
			return nil, out
		}, nil))
		res, err := a.InstallPolicy(ctx, c.policy)
		bz.Set(nil)
		if !forged {
			t.Fatalf("%s: not mounted: no counter read answered", c.name)
		}
		if err == nil {
			t.Errorf("%s: the install succeeded on a forged counter: %+v", c.name, res)
		}
		t.Logf("%s: %v", c.name, err)
		if got, err := a.readCounter(); err != nil || got != c0+1 {
			t.Errorf("%s: counter %d %v after the refused install, want %d", c.name, got, err, c0+1)
		}
		if !bytes.Equal(review46InstalledPolicy(t, a), cur) {
			t.Errorf("%s: the installed policy changed", c.name)
		}
	}
	if r, err := a.InstallPolicy(ctx, signed(c0+2, "")); err != nil || !r.Satisfied {
		t.Errorf("the honest install after: %+v %v", r, err)
	}
}
