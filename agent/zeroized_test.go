package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"regexp"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// After zeroize, commands that fail for want of anything to act on write
// nothing: no audit log, no audit gate, no NV index (found by review: key
// delete after zeroize --srk recreated the index and the log).
func TestNothingWrittenAfterZeroize(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	res, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	if err != nil {
		t.Fatal(err)
	}
	// The archive is named by a readable UTC time.
	if !regexp.MustCompile(`/audit-\d{8}T\d{6}\.\d{9}Z\.log$`).MatchString(res.AuditLog) {
		t.Errorf("archived trail %q", res.AuditLog)
	}
	d := sha256.Sum256(nil)
	for name, op := range map[string]func() error{
		"key delete": func() error { return a.DeleteKey(ctx, "k") },
		"sign":       func() error { _, err := a.Sign(ctx, "k", d[:], api.SignOptions{}); return err },
		"unseal":     func() error { _, err := a.Unseal(ctx, []byte(`{}`)); return err },
		"key create": func() error { _, err := a.CreateKey(ctx, api.CreateRequest{Name: "n", Type: "ecc-p256"}); return err },
	} {
		if err := op(); err == nil {
			t.Errorf("%s after zeroize: succeeded", name)
		}
	}
	if fi, err := os.Stat(a.auditPath()); err == nil && fi.Size() > 0 {
		t.Errorf("an audit log of %d bytes was written after zeroize", fi.Size())
	}
	if g, err := a.trailAnchor().gate(); err != nil || g != nil {
		t.Errorf("an audit gate after zeroize: %+v %v", g, err)
	}
	if _, err := a.t.ReadNVPublic(AuditAnchorHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Errorf("the audit anchor's NV index after zeroize: %v, want none", err)
	}
}
