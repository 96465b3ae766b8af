package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// Found by the review of issue 14, now held (the session keys its HMACs
// with its own copy, tpm.PolicySession.auth): keyStates.reset clears the
// objects' authValue of the entries it drops (clear(ks.pk.auth)), but the daemon's kept policy session
// (opSession) was started with that very slice: go-tpm's tpm2.Auth keeps
// the slice it is given, not a copy (opSession.auth is a clone, used only
// to compare). The first key use after any commit that this agent's
// lock() did not see (another process's: a one-shot provd, an operator's
// tool) zeroes the authValue inside the kept session; opPolicy still finds
// a.op.auth equal and reuses the session, whose HMACs are now keyed
// without the authValue. The TPM refuses the command (TPM_RC_BAD_AUTH),
// which provd reports as an authorization failure: a cached key's sign is
// retried after flushing and reloading the key (the failure masked, at the
// cost of a refused TPM2_Sign and a reload), and a key that must be loaded
// fails outright.

// failBus records every TPM answer that is not success.
type failBus struct {
	next  transport.TPM
	mu    sync.Mutex
	fails []string
}

func (b *failBus) Send(cmd []byte) ([]byte, error) {
	rsp, err := b.next.Send(cmd)
	if err == nil && len(rsp) >= 10 {
		if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
			b.mu.Lock()
			b.fails = append(b.fails, fmt.Sprintf("%v: rc 0x%x", swtpmtest.CommandCode(cmd), rc))
			b.mu.Unlock()
		}
	}
	return rsp, err
}

func (b *failBus) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.fails
	b.fails = nil
	return f
}

// otherProcessCommits changes the state as another process would: a store
// of its own on the directory, one unrelated record.
func otherProcessCommits(t *testing.T, dir string, n int) {
	t.Helper()
	other, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Update(context.Background(), func(tx *store.Tx) error {
		return tx.Put("review-note", n)
	}); err != nil {
		t.Fatal(err)
	}
}

// A warm sign after another process's commit: the kept session's authValue
// has been zeroed under it, and the TPM refuses provd's own Sign.
func TestKeptSessionOwnsItsAuthValue(t *testing.T) {
	b := &failBus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { b.next = next; return b }))
	a := keptAgent(t, env)
	for range 2 {
		if _, err := signK(a); err != nil {
			t.Fatal(err)
		}
	}
	b.take()
	otherProcessCommits(t, a.dir, 1)
	_, err := signK(a)
	if f := b.take(); err != nil || len(f) != 0 {
		t.Fatalf("the first warm sign after another process's commit: %v; TPM commands refused: %v", err, f)
	}
}

// The same with a key that must be loaded (j, created and not used yet;
// no test hook): its load under the PK runs in the kept session, whose
// authValue is zeroed; the sign fails, reported as a forgery on the bus
// (tpm_response_forged, exit 15): a false tamper alarm.
func TestKeyLoadAfterAnotherProcessCommit(t *testing.T) {
	b := &failBus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { b.next = next; return b }))
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "j", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	b.take()
	otherProcessCommits(t, a.dir, 2)
	d := sha256.Sum256([]byte("j"))
	_, err := a.Sign(ctx, "j", d[:], api.SignOptions{})
	if f := b.take(); err != nil || len(f) != 0 {
		t.Fatalf("sign with j (loaded) after another process's commit: %v; TPM commands refused: %v", err, f)
	}
}

// Found by the review of issue 14, now held (zeroize drops the kept
// states): zeroize left the objects' authValue of the zeroized PK (and
// every kept key's record, an extractable key's own authValue with it) in
// the daemon's keyStates, uncleared, until the next key use happens to
// read another state: the invariant "buffers that held secrets are cleared
// after use" held before keyStates (each operation's read was its own).
func TestZeroizeClearsKeptAuthValues(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	var kept [][]byte
	for _, ks := range a.states.keys {
		kept = append(kept, ks.pk.auth)
	}
	a.mu.Unlock()
	if len(kept) == 0 {
		t.Fatal("nothing kept after a sign")
	}
	if _, err := a.Zeroize(context.Background(), api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	n := len(a.states.keys)
	a.mu.Unlock()
	for _, auth := range kept {
		for _, c := range auth {
			if c != 0 {
				t.Fatalf("after zeroize the daemon still holds the zeroized objects' authValue (%d key states kept)", n)
			}
		}
	}
}
