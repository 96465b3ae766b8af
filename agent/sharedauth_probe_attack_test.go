package agent_test

// Attacks on the probe of a refused authorization (tpm.authorizeChecked), end to end: the
// exit codes of `provd attest now` (agent.AttestQuote) and of a one-shot
// audited operation (Seal) when A1 works around the probe.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// isSessionReadPublic: cmd is a TPM2_ReadPublic with a session (the probe).
func isSessionReadPublic(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic &&
		tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions
}

// probeDodger is A1 passing every command cc on and answering it RETRY
// (the channel resends it, the TPM refuses the copy: the nonces moved),
// and answering every probe with probeRC (no HMAC in an error answer).
// every false: only the first cc, and the first probe after it.
func probeDodger(cc tpm2.TPMCC, probeRC tpm2.TPMRC, every bool, ran, probes *int) swtpmtest.Hook {
	var mu sync.Mutex
	armed := false // the last cc was answered RETRY; its resend passes
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case swtpmtest.CommandCode(cmd) == cc:
			if armed || (!every && *ran > 0) {
				armed = false
				return nil, nil, false
			}
			*ran++
			armed = true
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
			return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
		case isSessionReadPublic(cmd) && *ran > 0 && (every || *probes == 0):
			*probes++
			return swtpmtest.ErrorAnswer(probeRC), nil, true
		}
		return nil, nil, false
	}
}

// `attest now`: A1 passes the quote (authorized in the shared session by
// the AK's value) on and answers TPM_RC_RETRY; the resend is refused by
// the TPM (the session's nonce moved). The probe then passes (forged: the
// ReadPublic is refused), or A1 answers it with an error of its own. No
// quote, never exit 11 ("a TPM authorization value was wrong": the AK's
// value is right; found by two reviews, it was), nothing left, and the
// next attest works.
func TestAttestQuoteForgedRetry(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("n"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7}}}
	for _, c := range []struct {
		name   string
		probe  tpm2.TPMRC // A1's answer to the probe; 0: the TPM's
		forged bool
	}{
		{"the probe passed on", 0, true},
		{"the probe answered SESSION_MEMORY", tpm2.TPMRCSessionMemory, false},
		{"the probe answered REFERENCE_S0", tpm2.TPMRCReferenceS0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ran, probes := 0, 0
			hook := swtpmtest.RanThenAnswered(tpm2.TPMCCQuote, tpm2.TPMRCRetry, &ran)
			if c.probe != 0 {
				hook = probeDodger(tpm2.TPMCCQuote, c.probe, false, &ran, &probes)
			}
			q.bus.Set(hook)
			_, err := q.ag.AttestQuote(ctx, req)
			q.bus.Set(nil)
			t.Logf("attest, the quote answered RETRY, %s: %v; exit %d", c.name, err, api.ExitCode(err))
			if ran == 0 || c.probe != 0 && probes == 0 {
				t.Fatal("attack not mounted")
			}
			if err == nil {
				t.Fatal("a quote returned")
			}
			if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
				t.Errorf("A1's forged RETRY reported as a wrong authorization value (exit %d)", api.ExitCode(err))
			}
			if c.forged && !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("A1's forged RETRY, the probe refused by the TPM: %v, want forged", err)
			}
			q.noLeftovers(t)
			res, err := q.ag.AttestQuote(ctx, req)
			if err != nil {
				t.Fatalf("the next attest: %v", err)
			}
			q.quoted(t, nonce[:], res)
		})
	}
}

// `attest now`: A1 renames the AK's load (the answer's handle has no HMAC)
// to an object of its own (a NULL-hierarchy primary with an authValue of
// its choosing, noDA). The TPM refuses the quote honestly; the probe, a
// ReadPublic of the AK's name at that handle, is refused: exit 15, forged
// (found by review: the GetRandom probe verified, exit 11).
func TestProbeAttestRenamedAKIsForged(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("n"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7}}}
	// A1's decoy, made through the bus's own side.
	decoy := swtpmtest.Decoy(t, q.bus.Next)
	var mu sync.Mutex
	var realAK tpm2.TPMHandle
	rename := swtpmtest.RenamedLoad(nil, decoy, &realAK)
	q.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		return rename(next, cmd)
	})
	_, err := q.ag.AttestQuote(ctx, req)
	q.bus.Set(nil)
	t.Logf("attest with the AK's load renamed to A1's object: %v; exit %d", err, api.ExitCode(err))
	if realAK == 0 {
		t.Fatal("not mounted")
	}
	if err == nil {
		t.Fatal("a quote returned")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == api.ExitBadAuth {
		t.Errorf("the bus renamed the AK's handle: exit %d, want forged", api.ExitCode(err))
	}
	// provd flushed the handle it was given (A1's decoy); the AK itself is
	// the sweep's (withAttestKey asks for it).
	_, _ = (tpm2.FlushContext{FlushHandle: decoy}).Execute(q.bus.Next)
	if left, _ := q.env.TPM.Leftovers(); len(left) > 0 {
		t.Logf("left before the next operation's sweep: %x (the real AK 0x%08x)", left, uint32(realAK))
	}
	res, err := q.ag.AttestQuote(ctx, req)
	if err != nil {
		t.Fatalf("the next attest: %v", err)
	}
	q.quoted(t, nonce[:], res)
	q.noLeftovers(t)
}

// The same class outside the shared session: a key use, whose TPM2_Sign
// is authorized in its policy session by the key's value. A1 passes a
// command of the use on (the TPM runs it) and forges RETRY; the resend
// meets the policy session used by the first run: the Sign's digest reset,
// or a step extended twice. Reported as forged (exit 15), not as a wrong
// value (exit 11) nor as a platform that fails the policy (exit 3: it was,
// before agent.policyUse); at most one more copy sent. An honest RETRY
// (the TPM never saw the command) is resent and the sign works.
func TestProbeSignForgedRetryExit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := sha256.Sum256([]byte("d"))
	// Each kind of agent on a TPM of its own: swtpm's three object slots
	// hold one agent's PK and key.
	for _, mode := range []string{"one-shot", "warm", "kept session"} {
		t.Run(mode, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			ag, dir := signingState(t, env)
			if mode == "kept session" {
				ag.Close()
				var err error
				if ag, err = agent.New(agent.Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil { // the daemon's
					t.Fatal(err)
				}
				defer ag.Close()
			}
			for _, c := range []struct {
				name string
				cc   tpm2.TPMCC
			}{{"Sign", tpm2.TPMCCSign}, {"PolicyPCR", tpm2.TPMCCPolicyPCR}, {"PolicyAuthValue", tpm2.TPMCCPolicyAuthValue}, {"Load", tpm2.TPMCCLoad}} {
				for _, forged := range []bool{true, false} {
					if c.cc == tpm2.TPMCCLoad && mode != "one-shot" {
						continue // the key is loaded
					}
					t.Run(fmt.Sprintf("%s/forged=%v", c.name, forged), func(t *testing.T) {
						ag := ag
						if mode == "one-shot" {
							ag.Close()
							ag = newAgent(t, env, dir)
						} else if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
							t.Fatal(err) // the key resident
						}
						n := 0
						hook := swtpmtest.RanThenAnswered(c.cc, tpm2.TPMRCRetry, &n)
						if !forged {
							hook = swtpmtest.AnsweredOnce(c.cc, tpm2.TPMRCRetry, &n)
						}
						bus.Set(hook)
						_, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{})
						bus.Set(nil)
						t.Logf("sent %d: %v; exit %d", n, err, api.ExitCode(err))
						if n == 0 {
							t.Fatal("not mounted")
						}
						if c.cc == tpm2.TPMCCSign && n > 2 {
							t.Errorf("Sign sent %d times", n)
						}
						switch {
						case !forged && err != nil:
							t.Errorf("an honest RETRY: %v", err)
						case forged && api.ExitCode(err) != api.ExitIdentity:
							t.Errorf("A1's forged RETRY after the TPM ran %s: %v, exit %d, want %d (forged)", c.name, err, api.ExitCode(err), api.ExitIdentity)
						}
						if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
							t.Fatalf("the next sign: %v", err)
						}
					})
				}
			}
		})
	}
}

// The same for a command whose policy session is a fresh one of its own
// (agent.withFreshSession): a seal's TPM2_Create under the PK, which A1
// passes on and answers RETRY. Forged (exit 15), nothing stored; an
// honest RETRY is resent and the seal works.
func TestProbeSealCreateForgedRetry(t *testing.T) {
	bus := &swtpmtest.Bus{}
	_, ag, _ := provisionedBehind(t, bus)
	ctx := context.Background()
	for _, forged := range []bool{true, false} {
		n := 0
		hook := swtpmtest.RanThenAnswered(tpm2.TPMCCCreate, tpm2.TPMRCRetry, &n)
		if !forged {
			hook = swtpmtest.AnsweredOnce(tpm2.TPMCCCreate, tpm2.TPMRCRetry, &n)
		}
		bus.Set(hook)
		blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
		bus.Set(nil)
		t.Logf("forged=%v, Create sent %d: %v; exit %d", forged, n, err, api.ExitCode(err))
		switch {
		case n != 2:
			t.Errorf("forged=%v: Create sent %d times, want 2", forged, n)
		case !forged && err != nil:
			t.Errorf("an honest RETRY: %v", err)
		case forged && (api.ExitCode(err) != api.ExitIdentity || blob != nil):
			t.Errorf("A1's forged RETRY after the TPM ran Create: %v (exit %d, a blob: %v), want exit %d and nothing", err, api.ExitCode(err), blob != nil, api.ExitIdentity)
		}
	}
}

// A one-shot seal whose record's gate proof A1 passes on and answers
// TPM_RC_RETRY: once, or every time with every probe answered
// SESSION_MEMORY. The record's first try proves the gate in a one-use
// session (the resend: REFERENCE_S0); its second, agent.trailAnchor's
// ReadPrepare, in tpm.ReadPrepareGatedExtend's keyed HMAC session, where
// the probe runs (found by review: there was none there, and the seal's
// error was ErrBadAuth, exit 11, though the gate's value is right; the
// record pends). Once, the second try succeeds; every time, the seal
// fails. Never exit 11; nothing is left after the operation (its sweep),
// the next seal records and the trail verifies.
func TestRecordProofForgedRetry(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		every bool
	}{{"once", false}, {"every time, every probe answered SESSION_MEMORY", true}} {
		t.Run(c.name, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env, ag, dir := provisionedBehind(t, bus)
			ctx := context.Background()
			ag.Close()
			ag = newAgent(t, env, dir) // one-shot: the trail opened afresh
			ran, probes := 0, 0
			hook := swtpmtest.RanThenAnswered(tpm2.TPMCCPolicySecret, tpm2.TPMRCRetry, &ran)
			if c.every {
				hook = probeDodger(tpm2.TPMCCPolicySecret, tpm2.TPMRCSessionMemory, true, &ran, &probes)
			}
			bus.Set(hook)
			_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
			bus.Set(nil)
			t.Logf("seal, its record's PolicySecret answered a forged RETRY %s (sent %d, probes %d): %v; exit %d", c.name, ran, probes, err, api.ExitCode(err))
			if ran == 0 {
				t.Fatal("attack not mounted")
			}
			if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
				t.Errorf("A1's forgeries reported as a wrong authorization value (exit %d): %v", api.ExitCode(err), err)
			}
			if !c.every && err != nil {
				t.Errorf("the record's second try: %v", err)
			}
			ag.Close()
			if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) > 0 {
				t.Errorf("left in the TPM after the operation's sweep: %x %v", left, lerr)
			}
			ag = newAgent(t, env, dir)
			if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("y"), PCRs: []int{7}}); err != nil {
				t.Fatalf("the next seal: %v", err)
			}
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Errorf("audit verify: %v", err)
			}
		})
	}
}
