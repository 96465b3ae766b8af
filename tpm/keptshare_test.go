package tpm_test

// The shared audit session kept between Shares (tpm.TPM.KeepShared, the
// daemon's): used by the next Share, never outside one, giving its slot up
// between Shares, and surviving what ends it unseen.

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// keptShareEnv is a TPM with its SRK pinned that keeps its shared session
// between Shares, behind a bus with a sessionLog set.
func keptShareEnv(t *testing.T) (*swtpmtest.Env, *swtpmtest.Bus, *sessionLog) {
	t.Helper()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	pinnedGateBlob(t, env.TPM)
	env.TPM.KeepShared(true)
	t.Cleanup(func() { env.TPM.KeepShared(false) }) // before the harness's leak check
	log := &sessionLog{}
	bus.Set(log.hook)
	return env, bus, log
}

// ownersSweep is what the connection's owner does after an operation that
// asked for the sweep (tpm.TPM.NeedsSweep; agent's sweepLeaks): it
// flushes every transient object and session but the shared session. It
// reports whether the sweep was asked for.
func ownersSweep(t *testing.T, tp *tpm.TPM) bool {
	t.Helper()
	if !tp.NeedsSweep() {
		return false
	}
	left, err := tp.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range left {
		if h != tp.SharedHandle() {
			if err := tp.Flush(h); err != nil {
				t.Fatal(err)
			}
		}
	}
	return true
}

// readShared is one Share with one authenticated PCR read.
func readShared(tp *tpm.TPM) error {
	return tp.Share(func() error {
		_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
}

// The second Share uses the first one's session: its read is its one
// command (no StartAuthSession, no FlushContext), in the same session;
// DropKept flushes it, and the next Share starts a new one.
func TestKeptShareAcrossShares(t *testing.T) {
	env, _, log := keptShareEnv(t)
	tp := env.TPM
	for i := range 3 {
		if err := readShared(tp); err != nil {
			t.Fatalf("Share %d: %v", i+1, err)
		}
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 1 {
		t.Errorf("%d StartAuthSession over three Shares, want 1", n)
	}
	if n := log.count(tpm2.TPMCCFlushContext); n != 0 {
		t.Errorf("%d FlushContext over three Shares, want 0", n)
	}
	reads := log.sessionsOf(tpm2.TPMCCPCRRead)
	if len(reads) != 3 || reads[0] != reads[1] || reads[1] != reads[2] || reads[0] != tp.SharedHandle() {
		t.Errorf("the reads named %v, the kept session is 0x%x: want one session", reads, tp.SharedHandle())
	}
	if err := tp.DropKept(); err != nil {
		t.Fatal(err)
	}
	if h := tp.SharedHandle(); h != 0 {
		t.Errorf("0x%x kept after DropKept", h)
	}
	nothingLeft(t, tp, "after DropKept")
	if err := readShared(tp); err != nil {
		t.Fatal(err)
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 2 || tp.SharedHandle() == 0 {
		t.Errorf("%d StartAuthSession, 0x%x kept after the Share after DropKept: want 2, a session", n, tp.SharedHandle())
	}
}

// Between Shares, the kept session gives its slot up to the session that
// needs it: three sessions start beside it with no refusal (the kept one
// flushed before the second), at most three loaded at once, and the next
// Share starts a new one.
func TestKeptShareGivesUpItsSlotBetweenShares(t *testing.T) {
	env, bus, log := keptShareEnv(t)
	tp := env.TPM
	if err := readShared(tp); err != nil {
		t.Fatal(err)
	}
	peak := &peakSessions{}
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		log.hook(next, cmd)
		return peak.hook(next, cmd)
	})
	var closers []func() error
	for i := range 3 {
		_, c, err := tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16)
		if err != nil {
			t.Fatalf("session %d of 3 beside the kept one: %v", i+1, err)
		}
		closers = append(closers, c)
	}
	if h := tp.SharedHandle(); h != 0 {
		t.Errorf("0x%x still kept beside three sessions", h)
	}
	for _, c := range closers {
		if err := c(); err != nil {
			t.Fatal(err)
		}
	}
	if peak.most > 3 {
		t.Errorf("%d sessions loaded at once, want 3 at most", peak.most)
	}
	if err := readShared(tp); err != nil {
		t.Fatal(err)
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 1+3+1 {
		t.Errorf("%d StartAuthSession, want 5 (the kept one again after the three)", n)
	}
}

// What ends the kept session between Shares, seen or unseen, costs the
// next Share nothing but a new session: someone flushes it through provd
// (zeroize), or behind its back (a suspend and resume behind /dev/tpm0
// loses loaded sessions, and no TPM_RC_INITIALIZE says so), a TPM reset
// provd starts the TPM up from, a suspend and resume, a migration (the
// TPM keeps the old session: flushed once it answers for itself). The
// next Share works, in one new session, which is kept, and nothing else
// is left loaded.
func TestKeptShareEndedBetweenShares(t *testing.T) {
	for _, c := range []struct {
		name string
		// reads: the PCR_Reads sent in the next Share; one more than
		// one where the first is refused for the lost session, and made
		// again in a new one.
		reads int
		end   func(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus)
	}{
		{"flushed through provd", 1, func(t *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) {
			if err := env.TPM.Flush(env.TPM.SharedHandle()); err != nil {
				t.Fatal(err)
			}
		}},
		{"flushed unseen", 2, func(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus) {
			if _, err := (tpm2.FlushContext{FlushHandle: env.TPM.SharedHandle()}).Execute(bus.Next); err != nil {
				t.Fatal(err)
			}
		}},
		// The read meets TPM_RC_INITIALIZE, provd starts the TPM up and
		// sends it again, refused: the session went with the reset.
		{"TPM reset", 3, func(_ *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) { env.Reset() }},
		{"suspend and resume", 2, func(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus) {
			if err := env.TPM.Shutdown(true); err != nil {
				t.Fatal(err)
			}
			env.Reset()
			if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(bus.Next); err != nil {
				t.Fatalf("Startup(STATE): %v", err)
			}
		}},
		{"migration", 1, func(_ *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) { env.Migrate() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, bus, _ := keptShareEnv(t)
			tp := env.TPM
			if err := readShared(tp); err != nil {
				t.Fatal(err)
			}
			c.end(t, env, bus)
			log := &sessionLog{}
			bus.Set(log.hook)
			if err := readShared(tp); err != nil {
				t.Fatalf("the first Share after it: %v", err)
			}
			if n := log.count(tpm2.TPMCCStartAuthSession); n != 1 {
				t.Errorf("%d StartAuthSession in the Share after it, want 1", n)
			}
			reads := log.sessionsOf(tpm2.TPMCCPCRRead)
			if len(reads) != c.reads {
				t.Errorf("%d PCR_Read sent, want %d", len(reads), c.reads)
			}
			kept := tp.SharedHandle()
			if kept == 0 || len(reads) == 0 || reads[len(reads)-1] != kept {
				t.Errorf("the reads named %x, the kept session is 0x%x", reads, kept)
			}
			left, err := tp.Leftovers()
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 1 || left[0] != kept {
				t.Errorf("%x loaded, want the kept session 0x%x alone", left, kept)
			}
		})
	}
}

// A1 answers the kept session's first read in a Share, and the read made
// again in a new session, with TPM_RC_REFERENCE_S0 (not loaded): the read
// is made again once, not more, and the Share fails; nothing is left, and
// the next Share works.
func TestKeptShareForgedLostOnce(t *testing.T) {
	env, bus, log := keptShareEnv(t)
	tp := env.TPM
	if err := readShared(tp); err != nil {
		t.Fatal(err)
	}
	forged := 0
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		log.hook(next, cmd)
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPCRRead {
			return nil, nil, false
		}
		forged++
		rsp := make([]byte, 10)
		binary.BigEndian.PutUint16(rsp, uint16(tpm2.TPMSTNoSessions))
		binary.BigEndian.PutUint32(rsp[2:], 10)
		binary.BigEndian.PutUint32(rsp[6:], uint32(tpm2.TPMRCReferenceS0))
		return rsp, nil, true
	})
	err := readShared(tp)
	bus.Set(log.hook)
	if !errors.Is(err, tpm2.TPMRCReferenceS0) {
		t.Fatalf("Share with every read refused: %v, want TPM_RC_REFERENCE_S0", err)
	}
	if forged != 2 {
		t.Errorf("the read was sent %d times, want 2 (made again once)", forged)
	}
	if h := tp.SharedHandle(); h != 0 {
		t.Errorf("0x%x kept after a failed Share", h)
	}
	nothingLeft(t, tp, "after the refused Share")
	if err := readShared(tp); err != nil {
		t.Fatalf("the next Share: %v", err)
	}
}

// A1 swaps the shared session for a cipherless one of its own at its
// number: inside a Share, a creation it then guards is refused
// TPM_RC_SYMMETRIC at the guard, before any HMAC, and that is forged (a
// guard always has a cipher; found by review 11, a plain TPM error);
// between Shares, the first use that is not a read probes the kept
// session first (TPM2_GetRandom, whose answer's HMAC fails) and the
// creation works in a new session.
func TestSharedSessionSwappedForACipherlessOne(t *testing.T) {
	env, bus, _ := keptShareEnv(t)
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	create := func() error {
		_, err := tp.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: []byte("secret")})
		return err
	}
	err = tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		swtpmtest.SwapSession(t, bus.Next, tp.SharedHandle())
		return create()
	})
	if !errors.Is(err, tpm.ErrResponseForged) || !errors.Is(err, tpm2.TPMRCSymmetric) {
		t.Errorf("a creation guarded by A1's cipherless session: %v, want forged (TPM_RC_SYMMETRIC)", err)
	}
	if err := readShared(tp); err != nil {
		t.Fatal(err)
	}
	swtpmtest.SwapSession(t, bus.Next, tp.SharedHandle())
	log := &sessionLog{}
	bus.Set(log.hook)
	if err := tp.Share(create); err != nil {
		t.Fatalf("a creation after A1 swapped the kept session: %v", err)
	}
	if n := log.count(tpm2.TPMCCGetRandom); n != 1 {
		t.Errorf("%d probes, want 1", n)
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 1 {
		t.Errorf("%d StartAuthSession, want 1 (a new session after the probe)", n)
	}
	if n := log.count(tpm2.TPMCCCreate); n != 1 {
		t.Errorf("%d TPM2_Create, want 1", n)
	}
	ownersSweep(t, tp) // A1's session, not flushed by its number
}
