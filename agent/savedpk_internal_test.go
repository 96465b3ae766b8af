package agent

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

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
// warm unseal loads it with TPM2_ContextLoad and reads back its name, where
// a load took a salted session, the load and the session's flush (12
// commands, was 13); a one-shot process saves no context it would never
// use.
func TestSavedPKWarmUnseal(t *testing.T) {
	log := &swtpmtest.CommandLog{}
	bus := &swtpmtest.Bus{}
	bus.Set(log.Hook)
	_, a, blob := savedPKAgent(t, bus)
	unsealKeptPK(t, a, blob)
	log.Start()
	unsealKeptPK(t, a, blob)
	cmds := log.Stop()
	// The unseal's session starts first (it would guard a load of the PK
	// from its blob: withPKGuarded).
	if len(cmds) != 12 || cmds[0] != tpm2.TPMCCStartAuthSession || cmds[1] != tpm2.TPMCCContextLoad || cmds[2] != tpm2.TPMCCReadPublic || swtpmtest.Count(cmds, tpm2.TPMCCLoad) != 1 || swtpmtest.Count(cmds, tpm2.TPMCCContextSave) != 0 {
		t.Fatalf("a warm unseal through the daemon: %d commands %v; want 12, the PK from its saved context", len(cmds), cmds)
	}

	oneShot, err := New(Config{TPM: a.t, StateDir: a.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer oneShot.Close()
	log.Start()
	unsealKeptPK(t, oneShot, blob)
	cmds = log.Stop()
	if swtpmtest.Count(cmds, tpm2.TPMCCContextSave) != 0 || swtpmtest.Count(cmds, tpm2.TPMCCContextLoad) != 0 || oneShot.pk != nil {
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
	log := &swtpmtest.CommandLog{}
	bus := &swtpmtest.Bus{}
	bus.Set(log.Hook)
	env, a, blob := savedPKAgent(t, bus)
	ctx := context.Background()
	unsealKeptPK(t, a, blob)

	env.Reset()
	log.Start()
	unsealKeptPK(t, a, blob)
	if cmds := log.Stop(); swtpmtest.Count(cmds, tpm2.TPMCCLoad) != 2 || a.pk == nil {
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
	log.Start()
	if _, err := a.Unseal(ctx, blob); err == nil {
		t.Fatal("a secret sealed under the zeroized PK unsealed")
	}
	if cmds := log.Stop(); swtpmtest.Count(cmds, tpm2.TPMCCContextLoad) != 0 || a.pk == nil || a.pk.id == old {
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

// setDAParams sets maxTries 3, recovery 1000 s, lockout recovery 1000 s
// (TPM2_DictionaryAttackParameters, raw: go-tpm v0.9.8 lacks it).
func setDAParams(t *testing.T, send func([]byte) ([]byte, error)) {
	t.Helper()
	cmd := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, 0)
	cmd = binary.BigEndian.AppendUint32(cmd, 0x13A)
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHLockout))
	cmd = binary.BigEndian.AppendUint32(cmd, 9)
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRSPW))
	cmd = append(cmd, 0, 0, 0, 0, 0)
	for _, v := range []uint32{3, 1000, 1000} {
		cmd = binary.BigEndian.AppendUint32(cmd, v)
	}
	binary.BigEndian.PutUint32(cmd[2:6], uint32(len(cmd)))
	if rsp, err := send(cmd); err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		t.Fatalf("TPM2_DictionaryAttackParameters: %x %v", rsp, err)
	}
}

// attackerContext loads, through next (the real TPM, as A1 on the bus),
// an ECC key of the attacker's own in the NULL hierarchy whose authPolicy
// is authPolicy and whose noDA is clear, saves its context and flushes it.
func attackerContext(t *testing.T, next transport.TPM, authPolicy []byte) (tpm2.TPMSContext, error) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return tpm2.TPMSContext{}, err
	}
	raw := k.PublicKey().Bytes()
	sens := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC,
		AuthValue: tpm2.TPM2BAuth{Buffer: []byte("attacker")},
		Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: k.Bytes()})}
	pub := tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{Decrypt: true, UserWithAuth: true}, // noDA clear
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}}),
	}
	le, err := (tpm2.LoadExternal{InPrivate: tpm2.New2B(sens), InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHNull}).Execute(next)
	if err != nil {
		return tpm2.TPMSContext{}, err
	}
	defer (tpm2.FlushContext{FlushHandle: le.ObjectHandle}).Execute(next)
	cs, err := (tpm2.ContextSave{SaveHandle: le.ObjectHandle}).Execute(next)
	if err != nil {
		return tpm2.TPMSContext{}, err
	}
	return cs.Context, nil
}

// plantContext plays A1 for two commands: a forged ContextLoad failure (as
// after a TPM reset), so that provd loads the PK from its blob and saves
// its context again, and an answer to that ContextSave with the context
// made by plant, on the real TPM (next). Then it leaves the bus.
func plantContext(t *testing.T, bus *swtpmtest.Bus, a *Agent, blob []byte, plant func(next transport.TPM) (tpm2.TPMSContext, error)) {
	t.Helper()
	var loads, saves atomic.Int32
	var plantErr atomic.Value
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCContextLoad:
			if loads.Add(1) == 1 {
				rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
				rsp = binary.BigEndian.AppendUint32(rsp, 10)
				rsp = binary.BigEndian.AppendUint32(rsp, uint32(tpm2.TPMRCIntegrity))
				return rsp, nil, true
			}
		case tpm2.TPMCCContextSave:
			if saves.Add(1) == 1 {
				rsp, err := next.Send(cmd) // provd's own save goes through, unused
				if err != nil {
					return rsp, err, true
				}
				c, err := plant(next)
				if err != nil {
					plantErr.Store(err)
					return rsp, nil, true
				}
				body := tpm2.Marshal(c)
				out := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
				out = binary.BigEndian.AppendUint32(out, uint32(10+len(body)))
				out = binary.BigEndian.AppendUint32(out, 0)
				return append(out, body...), nil, true
			}
		}
		return nil, nil, false
	})
	unsealKeptPK(t, a, blob) // through A1: the PK from its blob
	bus.Set(nil)
	if e := plantErr.Load(); e != nil {
		t.Fatalf("planting: %v", e)
	}
	if loads.Load() != 1 || saves.Load() != 1 {
		t.Fatalf("setup: ContextLoad forged %d times, ContextSave %d", loads.Load(), saves.Load())
	}
}

// A ContextSave answer is the bus's word (found by review: A1, on the bus
// for two commands, answered it with the context of an object of its own,
// with the PK's authPolicy and noDA clear, and left; the daemon kept it for
// its life, every PK use failed its authorization, and each failure
// counted toward the TPM's lockout). What a ContextLoad of the kept
// context gives must read back with the PK's name, and an operation that
// fails with it drops it: after A1 left, the daemon works again at once
// (an object of A1's own) or after one failure (the PK's public area
// alone, which has the PK's name and no authValue), and provd never moves
// the dictionary-attack counter.
func TestForgedContextSaveIsNotKept(t *testing.T) {
	for _, c := range []struct {
		name     string
		failures int
		plant    func(next transport.TPM, pk tpm.Object) (tpm2.TPMSContext, error)
	}{
		{"an object of A1's own", 0, func(next transport.TPM, pk tpm.Object) (tpm2.TPMSContext, error) {
			return attackerContext(t, next, pk.Public.AuthPolicy.Buffer)
		}},
		{"the PK's public area alone", 1, func(next transport.TPM, pk tpm.Object) (tpm2.TPMSContext, error) {
			le, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(pk.Public), Hierarchy: tpm2.TPMRHNull}).Execute(next)
			if err != nil {
				return tpm2.TPMSContext{}, err
			}
			defer (tpm2.FlushContext{FlushHandle: le.ObjectHandle}).Execute(next)
			cs, err := (tpm2.ContextSave{SaveHandle: le.ObjectHandle}).Execute(next)
			return cs.Context, err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env, a, blob := savedPKAgent(t, bus)
			setDAParams(t, env.TPM.Send)
			unsealKeptPK(t, a, blob)
			pk := a.pk.obj
			plantContext(t, bus, a, blob, func(next transport.TPM) (tpm2.TPMSContext, error) { return c.plant(next, pk) })
			failed := 0
			for range 3 {
				if _, err := a.Unseal(t.Context(), blob); err != nil {
					failed++
				}
			}
			info, err := a.t.Info()
			if err != nil {
				t.Fatal(err)
			}
			if failed > c.failures || info.Lockout.Counter != 0 {
				t.Fatalf("after A1 left: %d of 3 unseals failed (want at most %d), the lockout counter at %d", failed, c.failures, info.Lockout.Counter)
			}
		})
	}
}

// A1 passes provd's ContextLoad of the kept PK on to the TPM (which loads
// the PK at h) but answers it with another, free transient handle x, and
// answers ReadPublic(x) with the TPM's genuine ReadPublic(h). provd takes x
// for the PK, the key create fails, and provd flushes x: a failure with
// the kept context sweeps the handles after it, so the PK loaded at h does
// not stay loaded, held by nobody (found by the third review), and the
// daemon works once A1 has left.
func TestForwardedContextLoadLeavesNothingLoaded(t *testing.T) {
	bus := &swtpmtest.Bus{}
	_, a, blob := savedPKAgent(t, bus)
	ctx := t.Context()
	unsealKeptPK(t, a, blob)
	if a.pk == nil {
		t.Fatal("setup: no kept context")
	}
	var real, fake tpm2.TPMHandle
	hook := func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCContextLoad:
			rsp, err := next.Send(cmd)
			if err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return rsp, err, true
			}
			real = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
			fake = real + 7
			out := slices.Clone(rsp)
			binary.BigEndian.PutUint32(out[10:14], uint32(fake))
			return out, nil, true
		case tpm2.TPMCCReadPublic:
			if fake != 0 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == fake {
				c := slices.Clone(cmd)
				binary.BigEndian.PutUint32(c[10:14], uint32(real))
				rsp, err := next.Send(c)
				return rsp, err, true
			}
		}
		return nil, nil, false
	}
	var cerr error
	for i := range 3 { // A1 for three key creates, each after a warm unseal
		bus.Set(nil)
		unsealKeptPK(t, a, blob)
		bus.Set(hook)
		_, cerr = a.CreateKey(ctx, api.CreateRequest{Name: "x" + string(rune('a'+i)), Type: "ecc-p256"})
	}
	bus.Set(nil)
	if real == 0 {
		t.Fatal("setup: no ContextLoad seen")
	}
	stray := unheldLeft(t, a)
	// what an unseal right after A1 left sees
	_, uerr := a.Unseal(ctx, blob)
	t.Logf("unseal right after A1 left: %v", uerr)
	t.Logf("key create under A1: %v; the PK loaded at 0x%08x, provd told 0x%08x", cerr, uint32(real), uint32(fake))
	if len(stray) > 0 {
		t.Errorf("after A1 left: handles nobody holds stay loaded: %x (the PK's own: %v)", stray, slices.Contains(stray, real))
	}
	// Does it heal without restart?
	fails := 0
	for i := range 4 {
		if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k" + string(rune('a'+i)), Type: "ecc-p256"}); err != nil {
			fails++
			t.Logf("create %d after A1 left: %v", i, err)
		}
	}
	if fails > 0 {
		t.Errorf("%d of 4 key creates failed after A1 left", fails)
	}
}
