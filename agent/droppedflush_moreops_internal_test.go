package agent

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// TestDroppedSessionFlushNeedsNoFourthSession runs everyOperation; these
// are the others. After A1 drops the first session flush of the operation
// (answered success, the session kept loaded), no operation meets the
// session limit (/dev/tpmrm0 fails the write and flushes the connection's
// every session, the daemon's kept one included), except those that hold
// three sessions of their own at once, as dup import does: peer prove
// (at its ActivateCredential: T's policy session, the EK's, the
// encryption session). There A1's kept session is a fourth: the operation
// fails (a denial A1 on the bus has anyway), and once the session is gone
// it works again. Zeroize's last record starts its gate's policy session
// beside the witness and the record's keyed HMAC session (three), and
// holds; the rest hold two at most.
func TestDroppedSessionFlushNeedsNoFourthSessionInTheOtherOperations(t *testing.T) {
	t.Parallel()
	A, B := limitedPair(t)
	a, b, envB := A.a, B.a, B.env
	ctx := context.Background()
	blob, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "dh", Label: "dh", Type: "ecc-p256", Usage: "ecdh"}); err != nil {
		t.Fatal(err)
	}
	peerB, err := b.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	A.l.Take()
	B.l.Take()
	step := func(onB bool, name string, fn func() error) {
		threeOfItsOwn := name == "peer prove (B)"
		t.Helper()
		l, bus := A.l, A.bus
		if onB {
			l, bus = B.l, B.bus
		}
		refused, cmds, kept, err := swtpmtest.DroppingFirstSessionFlush(bus, l, fn)
		t.Logf("%s: flush of 0x%08x dropped; %v", name, uint32(kept), err)
		if refused > 0 && !threeOfItsOwn {
			t.Errorf("%s: after one dropped flush, %d refusals for want of a session slot (a fourth session): %v (%v)", name, refused, err, cmds)
		}
		if threeOfItsOwn {
			if err := fn(); err != nil {
				t.Errorf("%s, once A1's session is gone: %v", name, err)
			}
			if refused, _ := l.Take(); refused > 0 {
				t.Errorf("%s, once A1's session is gone: %d refusals for want of a session slot", name, refused)
			}
		}
	}
	step(false, "unseal", func() error { _, err := a.Unseal(ctx, blob); return err })
	step(false, "ecdh", func() error {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		_, err := a.ECDH(ctx, "dh", k.PublicKey())
		return err
	})
	step(false, "audit reanchor", func() error { _, err := a.AuditReanchor(ctx); return err })
	step(true, "peer prove (B)", func() error {
		c, err := NewPeerChallenge(peerB, caBundle(t, envB), time.Now)
		if err != nil {
			return err
		}
		_, err = b.PeerProve(ctx, c)
		return err
	})
	step(false, "zeroize", func() error { _, err := a.Zeroize(ctx, api.ZeroizeOptions{}); return err })
}
