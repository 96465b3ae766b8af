package agent

import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// No operation holds a fourth session (found by the review of the shared
// audit session, issue 14: behind /dev/tpmrm0 a fourth fails the device's
// write, and the kernel flushes the connection's every session), nor
// meets the TPM's refusal for want of an object or session slot: every
// operation runs on two TPMs behind swtpmtest.SessionLimit.
func TestNoOperationNeedsAFourthSession(t *testing.T) {
	lA, lB := &swtpmtest.SessionLimit{}, &swtpmtest.SessionLimit{}
	envA := swtpmtest.Start(t, swtpmtest.WithWrap(lA.Wrap))
	envB := swtpmtest.Start(t, swtpmtest.WithWrap(lB.Wrap))
	ctx := context.Background()
	a, b := provisioned(t, envA), provisioned(t, envB)
	lA.Take()
	lB.Take()
	step := func(l *swtpmtest.SessionLimit, name string, fn func() error) {
		t.Helper()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot in %v", name, refused, cmds)
		}
	}
	step(lA, "key create ecc", func() error {
		_, err := a.CreateKey(ctx, api.CreateRequest{Name: "p256", Type: "ecc-p256", Extractable: true})
		return err
	})
	step(lA, "key create rsa", func() error {
		_, err := a.CreateKey(ctx, api.CreateRequest{Name: "rsa", Type: "rsa-2048"})
		return err
	})
	step(lA, "seal", func() error {
		_, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
		return err
	})
	step(lA, "sign", func() error {
		_, err := a.Sign(ctx, "p256", make([]byte, 32), api.SignOptions{})
		return err
	})
	var peerB api.PeerIdentity
	step(lB, "peer identity (B)", func() (err error) {
		peerB, err = b.PeerIdentity(ctx)
		return err
	})
	var dup api.DupFile
	step(lA, "dup export (A)", func() (err error) {
		dup, err = a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerB, Approval: approveDup(t, a, "p256", peerB), EKCA: caBundle(t, envB)})
		return err
	})
	step(lB, "dup import (B)", func() error {
		_, err := b.DupImport(ctx, api.DupImportRequest{Name: "p256", Dup: dup})
		return err
	})
	step(lB, "sign imported (B)", func() error {
		_, err := b.Sign(ctx, "p256", make([]byte, 32), api.SignOptions{})
		return err
	})
	step(lA, "key delete", func() error { return a.DeleteKey(ctx, "rsa") })
	req, _ := kekRequest(t, "kek", "", 32)
	step(lA, "kek import", func() error { _, err := a.ImportKEK(ctx, req); return err })
	var wrapped []byte
	step(lA, "key export", func() (err error) {
		wrapped, err = a.ExportKey(ctx, api.KeyExportRequest{Name: "p256", KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "p256")})
		return err
	})
	req.Name, req.Usage = "kek-u", "unwrap"
	step(lA, "kek import (unwrap)", func() error { _, err := a.ImportKEK(ctx, req); return err })
	step(lA, "key import", func() error {
		_, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "imp", KEK: "kek-u", Wrapped: wrapped})
		return err
	})
	step(lA, "key derive", func() error {
		_, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "h", Label: "mac", Type: "hmac-sha256",
			Approval: approveRecipe(t, a, officer.Recipe{Type: "hmac-sha256", Label: "mac"})})
		return err
	})
	step(lA, "hmac", func() error { _, err := a.HMAC(ctx, "h", []byte("x")); return err })
	step(lA, "status", func() error { _, err := a.Status(ctx); return err })
	step(lA, "provision --force", func() error {
		_, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true})
		return err
	})
}
