package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// renamedLoads is A1 renaming the answers of the first len(to) loads of a
// key under its parent (review77LoadUnderT), the nth to to[n] (an object
// of A1's, or a handle that holds nothing), on a provisioned agent whose
// created key "c" is out of the cache. sign signs with "c" with the
// renames mounted and returns the handles the TPM made and its error.
func renamedLoads(t *testing.T, decoyToo bool, to ...tpm2.TPMHandle) (a *Agent, bus *swtpmtest.Bus, sign func() ([]tpm2.TPMHandle, error)) {
	t.Helper()
	ctx := context.Background()
	bus = &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a = provisioned(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	var decoy tpm2.TPMHandle
	if decoyToo {
		decoy = swtpmtest.Decoy(t, bus.Next)
	}
	return a, bus, func() ([]tpm2.TPMHandle, error) {
		var mu sync.Mutex
		made := make([]tpm2.TPMHandle, len(to))
		hooks := make([]swtpmtest.Hook, len(to))
		for i, h := range to {
			if h == 0 {
				h = decoy
			}
			hooks[i] = swtpmtest.RenamedLoad(review77LoadUnderT, h, &made[i])
		}
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			mu.Lock()
			defer mu.Unlock()
			for i, h := range hooks {
				if made[i] == 0 {
					return h(next, cmd)
				}
			}
			return nil, nil, false
		})
		d := sha256.Sum256([]byte("c"))
		_, err := a.Sign(ctx, "c", d[:], api.SignOptions{})
		bus.Set(nil)
		if decoy != 0 {
			_, _ = (tpm2.FlushContext{FlushHandle: decoy}).Execute(bus.Next) // the sweep may have
		}
		mu.Lock()
		defer mu.Unlock()
		for i, h := range made {
			if h == 0 {
				t.Fatalf("not mounted: load %d", i+1)
			}
		}
		return made, err
	}
}

// forgedThenClean fails t unless err is forged (exit 15), the next sign
// with "c" works, and none of the handles the TPM made (made) is left
// loaded, held by nobody.
func forgedThenClean(t *testing.T, a *Agent, bus *swtpmtest.Bus, err error, made []tpm2.TPMHandle) {
	t.Helper()
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("exit %d (%v), want forged (exit %d)", api.ExitCode(err), err, api.ExitIdentity)
	}
	d := sha256.Sum256([]byte("c"))
	if _, err := a.Sign(context.Background(), "c", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	for _, h := range made {
		if review80LeftLoaded(t, a, bus, h) {
			t.Errorf("a key the TPM loaded (0x%08x) is still loaded, held by nobody, after the next sign", uint32(h))
		}
	}
}

// forgedOrTheKeys fails t unless a sign with key name over digest either
// was refused as forged (exit 15), or gave sig, the key's own signature
// (the key loaded once more: a handle lost to a suspend and resume looks
// the same as a renamed one, review 81).
func forgedOrTheKeys(t *testing.T, a *Agent, name string, digest, sig []byte, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("exit %d (%v), want forged (exit %d) or the key's signature", api.ExitCode(err), err, api.ExitIdentity)
		}
		return
	}
	pub, _, perr := a.KeyPublic(context.Background(), name)
	if perr != nil {
		t.Fatal(perr)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest, sig) {
		t.Error("signed, but not with the key")
	}
}

// A1 renames the answer of a created key's TPM2_Load under the PK to an
// object of its own (the answer's HMAC covers the name, not the handle):
// the sign's policy session, every step passed, is refused at the command.
// Reported forged (exit 15), not a platform that fails the policy (exit 3,
// before review 79's mend), no signature, and the key the TPM loaded is
// not left in a slot held by nobody: the next use's sweep flushes it, and
// the next sign works.
func TestRenamedKeyLoadIsForgedAndSwept(t *testing.T) {
	t.Parallel()
	a, bus, sign := renamedLoads(t, true, 0)
	made, err := sign()
	forgedThenClean(t, a, bus, err, made)
}

// A1 renames the answer of the key's load to a handle that holds nothing,
// and again at the load provd makes once more (a handle lost to a suspend
// and resume looks the same the first time: review 81): the second
// refusal is forged (exit 15), and nothing is left held by nobody.
func TestRenamedKeyLoadTwiceIsForged(t *testing.T) {
	t.Parallel()
	a, bus, sign := renamedLoads(t, false, 0x80000002, 0x80000002)
	made, err := sign()
	forgedThenClean(t, a, bus, err, made)
}

// A1 holds an object of its own in the TPM and renames the answer of the
// key's load to a handle that holds nothing: provd loads the key once more,
// and finds no room (the PK, the key the TPM loaded first, held by nobody
// until the sweep, and A1's object: three slots on swtpm). The refusal
// stands as forged (exit 15), not as a TPM out of memory (exit 10; found
// by review 82), and nothing is left held by nobody after the next sign.
func TestRenamedKeyLoadWithNoRoomToLoadAgainIsForged(t *testing.T) {
	t.Parallel()
	a, bus, sign := renamedLoads(t, true, 0x80000002)
	made, err := sign()
	forgedThenClean(t, a, bus, err, made)
}
