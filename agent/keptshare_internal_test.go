package agent

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// The daemon keeps its audited operations' shared session between requests
// (tpm.TPM.KeepShared; issue 14): a warm seal starts no HMAC session and
// flushes none, its PCR read, anchor read and gate proof are authorized in
// the session the request before it kept, and what it sealed unseals. Key
// uses and status between requests leave it be; the leak sweep holds it;
// Close flushes it (the harness's leak check runs after).
func TestDaemonKeepsTheSharedSessionAcrossRequests(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := keptAgent(t, env)
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 1})
	seal := func() []byte {
		t.Helper()
		blob, err := a.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
		if err != nil {
			t.Fatal(err)
		}
		return blob
	}
	seal()
	kept := a.t.SharedHandle()
	if kept>>24 != 0x02 {
		t.Fatalf("0x%x kept after a seal, want an HMAC session", kept)
	}
	var mu sync.Mutex
	var codes []tpm2.TPMCC
	authorized := map[tpm2.TPMCC]tpm2.TPMHandle{}
	var flushed []tpm2.TPMHandle
	bus.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		codes = append(codes, cc)
		if nh, ok := map[tpm2.TPMCC]int{tpm2.TPMCCPCRRead: 0, tpm2.TPMCCNVRead: 2, tpm2.TPMCCPolicySecret: 2}[cc]; ok {
			authorized[cc] = swtpmtest.LastSession(cmd, nh)
		}
		if cc == tpm2.TPMCCFlushContext {
			flushed = append(flushed, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
		}
		return nil, nil, false
	})
	blob := seal()
	bus.Set(nil)
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCPCRRead, tpm2.TPMCCNVRead, tpm2.TPMCCPolicySecret} {
		if authorized[cc] != kept {
			t.Errorf("the warm seal's %v named 0x%x, the kept session is 0x%x", cc, authorized[cc], kept)
		}
	}
	if slices.Contains(flushed, kept) {
		t.Error("the warm seal flushed the kept session")
	}
	if n := swtpmtest.Count(codes, tpm2.TPMCCStartAuthSession); n != 1 {
		t.Errorf("the warm seal started %d sessions, want 1 (the creation's policy session): %v", n, codes)
	}
	if len(codes) != 13 {
		t.Errorf("the warm seal sent %d commands, want 13: %v", len(codes), codes)
	}
	if got, err := a.Unseal(ctx, blob); err != nil || string(got) != "the disk key" {
		t.Fatalf("unseal: %q %v", got, err)
	}
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	// A sweep after an operation: the kept session is held.
	a.t.Unheld()
	if err := a.RecordRefusal(ctx, "key-delete", "a sweep after it"); err != nil {
		t.Fatal(err)
	}
	if h := a.t.SharedHandle(); h != kept {
		t.Errorf("0x%x kept after key uses, status and a sweep, want 0x%x", h, kept)
	}
	left, err := a.t.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(left, kept) {
		t.Errorf("the kept session 0x%x is no longer loaded: %x", kept, left)
	}
	if extra := unheldLeft(t, a); len(extra) > 0 {
		t.Errorf("left beyond what the daemon holds: %x", extra)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if h := a.t.SharedHandle(); h != 0 {
		t.Errorf("0x%x kept after Close", h)
	}
}

// Zeroize ends the kept session, its key with it, before its first record,
// and keeps none after it.
func TestDaemonZeroizeEndsTheKeptSession(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 1})
	if err := a.RecordRefusal(ctx, "key-delete", "before zeroize"); err != nil {
		t.Fatal(err)
	}
	if a.t.SharedHandle() == 0 {
		t.Fatal("setup: no session kept after a record")
	}
	if _, err := a.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	if h := a.t.SharedHandle(); h != 0 {
		t.Errorf("0x%x kept after zeroize", h)
	}
	if extra := unheldLeft(t, a); len(extra) > 0 {
		t.Errorf("left after zeroize: %x", extra)
	}
}
