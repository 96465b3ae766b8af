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
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// commandLog records the command codes that cross bus while on.
type commandLog struct {
	mu  sync.Mutex
	on  bool
	got []tpm2.TPMCC
}

func (l *commandLog) start() { l.mu.Lock(); l.on, l.got = true, nil; l.mu.Unlock() }
func (l *commandLog) stop() []tpm2.TPMCC {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.on = false
	return l.got
}

func (l *commandLog) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	l.mu.Lock()
	if l.on {
		l.got = append(l.got, swtpmtest.CommandCode(cmd))
	}
	l.mu.Unlock()
	return nil, nil, false
}

func count(cmds []tpm2.TPMCC, cc tpm2.TPMCC) int {
	n := 0
	for _, c := range cmds {
		if c == cc {
			n++
		}
	}
	return n
}

// savedPKAgent is a daemon's agent (KeepSession) on a TPM behind bus,
// provisioned to PCR 7, with one sealed secret.
func savedPKAgent(t *testing.T, bus *swtpmtest.Bus) (*swtpmtest.Env, *Agent, []byte) {
	t.Helper()
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := context.Background()
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	blob, err := a.Seal(ctx, api.SealRequest{Data: []byte("kept PK")})
	if err != nil {
		t.Fatal(err)
	}
	return env, a, blob
}

func unsealKeptPK(t *testing.T, a *Agent, blob []byte) {
	t.Helper()
	got, err := a.Unseal(context.Background(), blob)
	if err != nil || string(got) != "kept PK" {
		t.Fatalf("unseal: %q %v", got, err)
	}
}

// The daemon keeps the PK's saved context between operations (issue 14): a
// warm unseal loads it with one TPM2_ContextLoad where a load took a salted
// session, the load and the session's flush (11 commands, was 13); a
// one-shot process saves no context it would never use.
func TestSavedPKWarmUnseal(t *testing.T) {
	log := &commandLog{}
	bus := &swtpmtest.Bus{}
	bus.Set(log.hook)
	_, a, blob := savedPKAgent(t, bus)
	unsealKeptPK(t, a, blob)
	log.start()
	unsealKeptPK(t, a, blob)
	cmds := log.stop()
	if len(cmds) != 11 || cmds[0] != tpm2.TPMCCContextLoad || count(cmds, tpm2.TPMCCLoad) != 1 || count(cmds, tpm2.TPMCCContextSave) != 0 {
		t.Fatalf("a warm unseal through the daemon: %d commands %v; want 11, the PK from its saved context", len(cmds), cmds)
	}

	oneShot, err := New(Config{TPM: a.t, StateDir: a.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer oneShot.Close()
	log.start()
	unsealKeptPK(t, oneShot, blob)
	cmds = log.stop()
	if count(cmds, tpm2.TPMCCContextSave) != 0 || count(cmds, tpm2.TPMCCContextLoad) != 0 || oneShot.pk != nil {
		t.Fatalf("a one-shot unseal saved or loaded a PK context: %v", cmds)
	}
}

// A ContextLoad answered on the bus with the handle of a key the cache
// holds loaded is forged (the TPM gives a loaded object's handle to
// nothing else): the PK is loaded from its blob instead, the kept context
// dropped, and the key, whose handle was named, is not flushed.
func TestSavedPKForgedContextLoad(t *testing.T) {
	bus := &swtpmtest.Bus{}
	_, a, blob := savedPKAgent(t, bus)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	if _, err := a.Sign(ctx, "k", digest, api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	unsealKeptPK(t, a, blob)
	// A key resident while the PK's context loads: policy show keeps the
	// cached keys resident.
	if _, err := a.Sign(ctx, "k", digest, api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	held := a.keys.Handles()
	if len(held) == 0 || a.pk == nil {
		t.Fatalf("setup: resident keys %v, PK context kept %v", held, a.pk != nil)
	}
	var forged, loads int
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCContextLoad:
			forged++
			rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
			rsp = binary.BigEndian.AppendUint32(rsp, 14)
			rsp = binary.BigEndian.AppendUint32(rsp, 0)
			rsp = binary.BigEndian.AppendUint32(rsp, uint32(held[0]))
			return rsp, nil, true
		case tpm2.TPMCCLoad:
			loads++
		}
		return nil, nil, false
	})
	if _, err := a.ShowPolicy(ctx); err != nil {
		t.Fatalf("policy show under the forged answer: %v", err)
	}
	bus.Set(nil)
	if forged != 1 || loads != 1 {
		t.Fatalf("ContextLoad answered %d times, %d loads: the PK was not loaded from its blob", forged, loads)
	}
	if !slices.Contains(a.keys.Handles(), held[0]) {
		t.Fatal("the key whose handle the forged answer named was flushed")
	}
	if _, err := a.Sign(ctx, "k", digest, api.SignOptions{}); err != nil {
		t.Fatalf("sign after the forged answer: %v", err)
	}
}

// A saved context does not outlive what it stands for: a TPM reset (the
// TPM no longer takes it: the PK is loaded from its blob again), zeroize
// and Close (dropped), another process's provision (another PK: its id
// differs, and the old context is never loaded).
func TestSavedPKLifetime(t *testing.T) {
	log := &commandLog{}
	bus := &swtpmtest.Bus{}
	bus.Set(log.hook)
	env, a, blob := savedPKAgent(t, bus)
	ctx := context.Background()
	unsealKeptPK(t, a, blob)

	env.Reset()
	log.start()
	unsealKeptPK(t, a, blob)
	if cmds := log.stop(); count(cmds, tpm2.TPMCCLoad) != 2 || a.pk == nil {
		t.Fatalf("after a TPM reset: %v, context kept %v; want the PK loaded from its blob and its new context kept", cmds, a.pk != nil)
	}

	// Another process provisions the state anew: another PK.
	old := a.pk.id
	other, err := New(Config{TPM: a.t, StateDir: a.dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
		t.Fatal(err)
	}
	other.Close()
	log.start()
	if _, err := a.Unseal(ctx, blob); err == nil {
		t.Fatal("a secret sealed under the zeroized PK unsealed")
	}
	if cmds := log.stop(); count(cmds, tpm2.TPMCCContextLoad) != 0 || a.pk == nil || a.pk.id == old {
		t.Fatalf("after another process's provision: %v; the old PK's context was loaded, or the new one's not kept", cmds)
	}
	blob2, err := a.Seal(ctx, api.SealRequest{Data: []byte("kept PK")})
	if err != nil {
		t.Fatal(err)
	}
	unsealKeptPK(t, a, blob2)

	if _, err := a.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	if a.pk != nil {
		t.Fatal("zeroize kept the PK's saved context")
	}
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	blob3, err := a.Seal(ctx, api.SealRequest{Data: []byte("kept PK")})
	if err != nil {
		t.Fatal(err)
	}
	unsealKeptPK(t, a, blob3)
	if err := a.Close(); err != nil || a.pk != nil {
		t.Fatalf("Close: %v; the PK's saved context kept: %v", err, a.pk != nil)
	}
}
