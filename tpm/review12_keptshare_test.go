package tpm_test

// Review 12: the mend of review 11 (commit ef3b0c6): the kept shared
// session's first use in a Share is made again only for a read; any other
// first use probes it first (TPM2_GetRandom in it) and goes to a new
// session if the probe fails.

import (
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review12Create is a creation under the SRK, its sensitive area guarded by
// the shared session: a first use that is not a read (probed).
func review12Create(t *testing.T, tp *tpm.TPM) func() error {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	return func() error {
		_, err := tp.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: []byte("review 12")})
		return err
	}
}

// review12Resume is a suspend and resume provd does not see (behind
// /dev/tpm0: the OS sends TPM2_Shutdown(STATE), firmware
// TPM2_Startup(STATE)): every loaded session is gone, their numbers are
// free, provd's generation of the TPM does not move.
func review12Resume(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus) {
	t.Helper()
	if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUState}).Execute(bus.Next); err != nil {
		t.Fatalf("Shutdown(STATE): %v", err)
	}
	env.Reset()
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(bus.Next); err != nil {
		t.Fatalf("Startup(STATE): %v", err)
	}
}

// Attack 1: A1 answers the probe (the kept session's TPM2_GetRandom before
// a creation, the Share's first use) in every way it can: the TPM's answer
// with its HMAC changed, an error after the TPM ran it or in its place, a
// TPM_RC_REFERENCE, a warning, no answer at all, an earlier GetRandom
// answer of the same session replayed, a forged TPM_RC_INITIALIZE. The
// creation is made once, in a new session, and works; the lockout counter
// does not move, nothing is left but the kept session, and the next Share
// works.
func TestReview12ProbeAnsweredByA1(t *testing.T) {
	type forge func(next transport.TPM, cmd []byte, earlier []byte) ([]byte, error)
	passed := func(change func(rsp []byte) []byte) forge {
		return func(next transport.TPM, cmd []byte, _ []byte) ([]byte, error) {
			rsp, err := next.Send(cmd)
			if err != nil {
				return nil, err
			}
			return change(append([]byte(nil), rsp...)), nil
		}
	}
	instead := func(rc tpm2.TPMRC) forge {
		return func(transport.TPM, []byte, []byte) ([]byte, error) { return swtpmtest.ErrorAnswer(rc), nil }
	}
	for _, c := range []struct {
		name string
		f    forge
	}{
		{"HMAC changed", passed(func(rsp []byte) []byte { rsp[len(rsp)-1] ^= 1; return rsp })},
		{"random bytes changed", passed(func(rsp []byte) []byte { rsp[10+4+2] ^= 1; return rsp })},
		{"ran, answered VALUE", passed(func([]byte) []byte { return swtpmtest.ErrorAnswer(tpm2.TPMRCValue) })},
		{"ran, answered REFERENCE_S0", passed(func([]byte) []byte { return swtpmtest.ErrorAnswer(tpm2.TPMRCReferenceS0) })},
		{"ran, answered RETRY", passed(func([]byte) []byte { return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry) })},
		{"ran, answered SESSION_MEMORY", passed(func([]byte) []byte { return swtpmtest.ErrorAnswer(tpm2.TPMRCSessionMemory) })},
		{"REFERENCE_S0 in its place", instead(tpm2.TPMRCReferenceS0)},
		{"RETRY in its place", instead(tpm2.TPMRCRetry)},
		{"SYMMETRIC in its place", instead(tpm2.TPMRCSymmetric + tpm2.TPMRC(0x100))},
		{"no answer", func(transport.TPM, []byte, []byte) ([]byte, error) { return nil, errors.New("A1: dropped") }},
		{"ran, no answer", func(next transport.TPM, cmd []byte, _ []byte) ([]byte, error) {
			_, _ = next.Send(cmd)
			return nil, errors.New("A1: dropped")
		}},
		{"an earlier answer replayed", func(next transport.TPM, cmd []byte, earlier []byte) ([]byte, error) {
			if earlier == nil {
				return nil, errors.New("review 12: no earlier answer captured")
			}
			return append([]byte(nil), earlier...), nil
		}},
		{"ran, an earlier answer replayed", func(next transport.TPM, cmd []byte, earlier []byte) ([]byte, error) {
			_, _ = next.Send(cmd)
			if earlier == nil {
				return nil, errors.New("review 12: no earlier answer captured")
			}
			return append([]byte(nil), earlier...), nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, bus, _ := keptShareEnv(t)
			tp := env.TPM
			create := review12Create(t, tp)
			lock := swtpmtest.LockoutCounter(t, bus.Next)
			// An earlier probe's answer, for the replay: a Share whose
			// first use is a creation probes the kept session.
			var earlier []byte
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCGetRandom {
					return nil, nil, false
				}
				rsp, err := next.Send(cmd)
				if err == nil && earlier == nil {
					earlier = append([]byte(nil), rsp...)
				}
				return rsp, err, true
			})
			if err := readShared(tp); err != nil {
				t.Fatal(err)
			}
			if err := tp.Share(create); err != nil {
				t.Fatal(err)
			}
			if earlier == nil {
				t.Fatal("setup: no probe in a Share whose first use is a creation")
			}
			if err := readShared(tp); err != nil {
				t.Fatal(err)
			}
			kept := tp.SharedHandle()
			forged, creates, starts := 0, 0, 0
			var after []tpm2.TPMCC
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				cc := swtpmtest.CommandCode(cmd)
				switch {
				case cc == tpm2.TPMCCCreate:
					creates++
				case cc == tpm2.TPMCCStartAuthSession:
					starts++
				}
				if forged > 0 {
					after = append(after, cc)
				}
				if cc != tpm2.TPMCCGetRandom || forged > 0 || swtpmtest.LastSession(cmd, 0) != kept {
					return nil, nil, false
				}
				forged++
				rsp, err := c.f(next, cmd, earlier)
				return rsp, err, true
			})
			err := tp.Share(create)
			bus.Set(nil)
			t.Logf("probe forged %d; then %v; err %v", forged, after, err)
			if forged != 1 {
				t.Fatalf("the probe was met %d times, want 1", forged)
			}
			if err != nil {
				t.Errorf("the creation after a probe A1 answered: %v (forged %v, exit-3 policy %v)", err,
					errors.Is(err, tpm.ErrResponseForged), errors.Is(err, tpm.ErrPolicyNotSatisfied))
			}
			if creates != 1 {
				t.Errorf("TPM2_Create sent %d times, want 1", creates)
			}
			if n := swtpmtest.LockoutCounter(t, bus.Next); n != lock {
				t.Errorf("the lockout counter moved from %d to %d", lock, n)
			}
			ownersSweep(t, tp) // a kept session given up is forgotten (review 12's mend)
			left, lerr := tp.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, h := range left {
				if h != tp.SharedHandle() {
					t.Errorf("0x%08x left loaded (kept 0x%08x)", uint32(h), uint32(tp.SharedHandle()))
					_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(bus.Next)
				}
			}
			if err := readShared(tp); err != nil {
				t.Errorf("the next Share: %v", err)
			}
			if err := tp.Share(create); err != nil {
				t.Errorf("the next creation: %v", err)
			}
		})
	}
}

// Attack 2: an honest event (a reset, a power cut, a migration) right at
// the probe, before it reaches the TPM, and between the probe's answer and
// the command after it. The creation is never forged and never a policy
// failure; after a reset or power cut between probe and command it may fail
// (as a one-shot creation whose session a reset took), after a migration
// it works; nothing is left but the kept session, and the next works.
func TestReview12HonestEventAtTheProbe(t *testing.T) {
	for _, ev := range swtpmtest.Events {
		for _, when := range []string{"before the probe", "after the probe"} {
			t.Run(ev+"/"+when, func(t *testing.T) {
				env, bus, _ := keptShareEnv(t)
				tp := env.TPM
				create := review12Create(t, tp)
				if err := readShared(tp); err != nil {
					t.Fatal(err)
				}
				kept := tp.SharedHandle()
				fired := false
				bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCGetRandom || swtpmtest.LastSession(cmd, 0) != kept {
						return nil, nil, false
					}
					fired = true
					if when == "before the probe" {
						env.Event(ev)
						return nil, nil, false
					}
					rsp, err := next.Send(cmd)
					env.Event(ev)
					return rsp, err, true
				})
				err := tp.Share(create)
				bus.Set(nil)
				t.Logf("%s %s: %v", ev, when, err)
				if !fired {
					t.Fatal("no probe")
				}
				if errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrPolicyNotSatisfied) {
					t.Errorf("an honest %s %s: %v", ev, when, err)
				}
				if err != nil && (ev == "migrate" || when == "before the probe") {
					t.Errorf("an honest %s %s failed the creation: %v", ev, when, err)
				}
				left, lerr := tp.Leftovers()
				if lerr != nil {
					t.Fatal(lerr)
				}
				for _, h := range left {
					if h != tp.SharedHandle() {
						t.Errorf("0x%08x left loaded (kept 0x%08x)", uint32(h), uint32(tp.SharedHandle()))
						_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(bus.Next)
					}
				}
				if err := tp.Share(create); err != nil {
					t.Errorf("the next creation: %v", err)
				}
			})
		}
	}
}

// Attack 3: a suspend and resume provd does not see between Shares frees
// the kept session's number; a session provd starts before the next Share
// (of its own, outside any Share: as the daemon's key uses do, or an
// operation's own session before its first use of the shared one) takes
// it. The next Share's first use, a read or a probed creation, meets that
// session at the kept number. The honest event must cost nothing but a new
// session: the Share works, is never reported forged, and the session of
// provd's own at that number is not flushed (it works after).
//
// Failed before the mend (review 12): the first use is not refused TPM_RC_REFERENCE_S* but
// TPM_RC_BAD_AUTH (an HMAC session of provd's at the number) or
// TPM_RC_HANDLE (a policy session in the slot: swtpm numbers both kinds
// from one set of slots), so a read is not made again and fails (ErrBadAuth
// or ErrNotFound); and inShared's give-up (dropShared, the generation
// unchanged) flushes the number, taking provd's own session, read or probe.
func TestReview12UnseenResumeNumberTaken(t *testing.T) {
	for _, kind := range []string{"hmac", "policy"} {
		for _, use := range []string{"read", "creation"} {
			t.Run(kind+"/"+use, func(t *testing.T) {
				env, bus, _ := keptShareEnv(t)
				tp := env.TPM
				create := review12Create(t, tp)
				if err := readShared(tp); err != nil {
					t.Fatal(err)
				}
				kept := tp.SharedHandle()
				review12Resume(t, env, bus)
				var s tpm2.Session
				var closer func() error
				var err error
				if kind == "hmac" {
					s, closer, err = tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Audit())
				} else {
					s, closer, err = tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer closer()
				t.Logf("kept 0x%08x, provd's own %s session 0x%08x", uint32(kept), kind, uint32(s.Handle()))
				if kind == "hmac" && s.Handle() != kept {
					t.Fatalf("the new session is 0x%x, the kept one was 0x%x: the number was not reused", s.Handle(), kept)
				}
				lock := swtpmtest.LockoutCounter(t, bus.Next)
				switch use {
				case "read":
					err = readShared(tp)
				default:
					err = tp.Share(create)
				}
				if err != nil {
					t.Errorf("the Share after an unseen suspend and resume: %v (forged %v)", err, errors.Is(err, tpm.ErrResponseForged))
				}
				if n := swtpmtest.LockoutCounter(t, bus.Next); n != lock {
					t.Errorf("the lockout counter moved from %d to %d", lock, n)
				}
				// provd's own session still works.
				if kind == "hmac" {
					if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp, s); err != nil {
						t.Errorf("provd's own session 0x%08x at the kept number no longer works: %v", uint32(s.Handle()), err)
					}
				} else {
					if _, err := (tpm2.PolicyAuthValue{PolicySession: s.Handle()}).Execute(tp); err != nil {
						t.Errorf("provd's own policy session 0x%08x no longer works: %v", uint32(s.Handle()), err)
					}
				}
			})
		}
	}
}
