package agent

import (
	"context"
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

// A1 renames the answer of a created key's TPM2_Load under the PK to an
// object of its own (the answer's HMAC covers the name, not the handle):
// the sign's policy session, every step passed, is refused at the command.
// Reported forged (exit 15), not a platform that fails the policy (exit 3,
// before review 79's mend), no signature, and the key the TPM loaded is
// not left in a slot held by nobody: the next use's sweep flushes it, and
// the next sign works.
func TestRenamedKeyLoadIsForgedAndSwept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := provisioned(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	decoy := swtpmtest.Decoy(t, bus.Next)
	var mu sync.Mutex
	var made tpm2.TPMHandle
	rename := swtpmtest.RenamedLoad(review77LoadUnderT, decoy, &made)
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		return rename(next, cmd)
	})
	d := sha256.Sum256([]byte("c"))
	_, err := a.Sign(ctx, "c", d[:], api.SignOptions{})
	bus.Set(nil)
	mu.Lock()
	real := made
	mu.Unlock()
	if real == 0 {
		t.Fatal("not mounted: no load under the PK")
	}
	if err == nil {
		t.Fatal("signed through A1's object")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("a key's load answer naming A1's object: exit %d (%v), want forged (exit %d)", api.ExitCode(err), err, api.ExitIdentity)
	}
	if _, err := a.Sign(ctx, "c", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	for _, h := range unheldLeft(t, a) {
		if h == real {
			t.Errorf("the key the TPM loaded (0x%08x) is still loaded, held by nobody, after the next sign", uint32(real))
			_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(bus.Next)
		}
	}
}

// A1 renames the answer of the key's load to a handle that holds nothing,
// and again at the load provd makes once more (a handle lost to a suspend
// and resume looks the same the first time: review 81): the second
// refusal is forged (exit 15), and nothing is left held by nobody.
func TestRenamedKeyLoadTwiceIsForged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := provisioned(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	const empty = tpm2.TPMHandle(0x80000002)
	var mu sync.Mutex
	var first, second tpm2.TPMHandle
	h1 := swtpmtest.RenamedLoad(review77LoadUnderT, empty, &first)
	h2 := swtpmtest.RenamedLoad(review77LoadUnderT, empty, &second)
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if first == 0 {
			return h1(next, cmd)
		}
		return h2(next, cmd)
	})
	d := sha256.Sum256([]byte("c"))
	_, err := a.Sign(ctx, "c", d[:], api.SignOptions{})
	bus.Set(nil)
	mu.Lock()
	f, s := first, second
	mu.Unlock()
	if f == 0 || s == 0 {
		t.Fatalf("not mounted: loads 0x%08x, 0x%08x", uint32(f), uint32(s))
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("both loads renamed to an empty handle: exit %d (%v), want forged (exit %d)", api.ExitCode(err), err, api.ExitIdentity)
	}
	if _, err := a.Sign(ctx, "c", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	for _, h := range unheldLeft(t, a) {
		if h == f || h == s {
			t.Errorf("a key the TPM loaded (0x%08x) is still loaded, held by nobody, after the next sign", uint32(h))
			_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(bus.Next)
		}
	}
}

// A1 holds an object of its own in the TPM and renames the answer of the
// key's load to a handle that holds nothing: provd loads the key once more,
// and finds no room (the PK, the key the TPM loaded first, held by nobody
// until the sweep, and A1's object: three slots on swtpm). The refusal
// stands as forged (exit 15), not as a TPM out of memory (exit 10; found
// by review 82), and nothing is left held by nobody after the next sign.
func TestRenamedKeyLoadWithNoRoomToLoadAgainIsForged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := provisioned(t, env)
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	decoy := swtpmtest.Decoy(t, bus.Next)
	var mu sync.Mutex
	var made tpm2.TPMHandle
	rename := swtpmtest.RenamedLoad(review77LoadUnderT, 0x80000002, &made)
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		return rename(next, cmd)
	})
	d := sha256.Sum256([]byte("c"))
	_, err := a.Sign(ctx, "c", d[:], api.SignOptions{})
	bus.Set(nil)
	if _, ferr := (tpm2.FlushContext{FlushHandle: decoy}).Execute(bus.Next); ferr != nil {
		t.Logf("flush of A1's object: %v", ferr)
	}
	mu.Lock()
	real := made
	mu.Unlock()
	if real == 0 {
		t.Fatal("not mounted")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("a renamed load with no room to load again: exit %d (%v), want forged (exit %d)", api.ExitCode(err), err, api.ExitIdentity)
	}
	if _, err := a.Sign(ctx, "c", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	for _, h := range unheldLeft(t, a) {
		if h == real {
			t.Errorf("the key the TPM loaded (0x%08x) is still loaded, held by nobody, after the next sign", uint32(h))
			_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(bus.Next)
		}
	}
}
