package fwhook_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/policy"
)

// TestReview49StalledHashingLeavesPCRUnmeasured: FLAW (failed before the mend): the genuine
// signer's manifest names an image whose read never answers (a stalled
// disk, a network or FUSE file system: the threat model's issue-14 row
// says this holds the hook until the unit's timeout). Verify has no bound
// of its own and no way to be told to stop (it takes no context; the CLI's
// SIGTERM context is not passed to it; the verdict waits for the hashing),
// and nothing is extended before the verdict. So when the unit's
// TimeoutStartSec ends it (SIGTERM, caught by the CLI and ignored by
// Verify, then SIGKILL), PCR 12 is left at its reset value, OnFailure=
// runs, and root on that boot (A5) extends the verified measurement by
// hand: PCR 12 holds the good value, with firmware that was never
// verified. The stall is simulated with fwhook.SetVerifyImages (as
// TestRefusedManifestIsNotHashed does); 3 s stands for the unit's timeout.
func TestReview49StalledHashingLeavesPCRUnmeasured(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	good := f.manifest(t, f.signer, 1, "gateway")
	f.reboot()

	entered := make(chan struct{})
	release := make(chan struct{})
	restore := fwhook.SetVerifyImages(func(context.Context, firmware.Manifest, string) error {
		close(entered)
		<-release // a read that never answers does not look at the context
		return errors.New("read boot.bin: input/output error")
	})
	defer restore()
	defer close(release)
	// The CLI's context, which SIGTERM ends: systemd's at the unit's
	// TimeoutStartSec (mended: VerifyContext stops waiting and measures
	// the failure; before, nothing was measured until SIGKILL).
	ctx, sigterm := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := f.verifyContext(ctx, good, false); done <- err }()
	<-entered
	time.Sleep(200 * time.Millisecond)
	sigterm()
	select {
	case err := <-done:
		t.Logf("Verify after SIGTERM: %v", err)
		if err == nil {
			t.Fatal("a stopped verification succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Verify still waits on the stalled read 10 s after SIGTERM: SIGKILL would leave PCR 12 unmeasured")
	}
	if got := f.pcr(t); bytes.Equal(got, make([]byte, 32)) {
		t.Fatal("nothing measured after SIGTERM: PCR 12 at its reset value")
	}
	// A5, root on that boot: a hand extend does not reach the good value.
	s, err := firmware.Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	vm := attest.VerifiedMeasurement(crypto.SHA256, mustName(t, f.officer.Public()), "gateway", s.Digest())
	if err := f.env.TPM.PCRExtendAll(fwhook.DefaultPCR, []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: vm}}); err != nil {
		t.Fatal(err)
	}
	if got := f.pcr(t); bytes.Equal(got, f.good(t, good)) {
		t.Errorf("a hook stopped on a stalled image read, then a hand extend: the good value %x", got)
	}
}

// TestReview49AnchorShapeOtherAttributes: Held: another process (no owner
// authorization) undefines the anchor and defines one of provd's shape,
// policy and content, its own officer's, but with one attribute more
// (READ_STCLEAR, which lets it hide the anchor until reboot; WRITEDEFINE;
// NO_DA off), written through PolicySigned by its officer: the hook
// refuses it (ErrAnchorUntrusted, exit 22) and leaves the failed state.
func TestReview49AnchorShapeOtherAttributes(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	evil := newKey(t)
	evilName := mustName(t, evil.Public())
	evilPub, err := policy.SignerPublic(evil.Public())
	if err != nil {
		t.Fatal(err)
	}
	m := f.manifest(t, evil, 1, "gateway")
	for _, c := range []struct {
		name string
		mod  func(a *tpm2.TPMANV)
	}{
		{"read stclear", func(a *tpm2.TPMANV) { a.ReadSTClear = true }},
		{"write define", func(a *tpm2.TPMANV) { a.WriteDefine = true }},
		{"DA counted", func(a *tpm2.TPMANV) { a.NoDA = false }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.reboot()
			tp := f.env.TPM
			if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
				t.Fatal(err)
			}
			pub, err := fwhook.AnchorPublic(evilName, false)
			if err != nil {
				t.Fatal(err)
			}
			c.mod(&pub.Attributes)
			x, err := tp.DefineNV(pub)
			if err != nil {
				t.Fatal(err)
			}
			content, _ := fwhook.Anchor{Officer: evilName, Class: "gateway", Current: evilName}.Marshal()
			sign := func(aHash []byte) (tpm2.TPMTSignature, error) { return policy.SignDigest(evil, aHash) }
			if err := tp.NVWriteSigned(x, content, evilPub, fwhook.AnchorRef, sign); err != nil {
				t.Fatal(err)
			}
			f.reboot()
			res, err := f.verify(m, false)
			if !errors.Is(err, firmware.ErrAnchorUntrusted) || res.OK || !bytes.Equal(f.pcr(t), failed) {
				t.Fatalf("an anchor of provd's shape with %s: %+v, %v, PCR %x", c.name, res, err, f.pcr(t))
			}
		})
	}
}
