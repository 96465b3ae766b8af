package tpm_test

// Review 10: the spare policy session taken by a gate proof other than
// the record's (the gated counter's NV_Increment), and a spare whose
// policy was applied again after the command it authorized.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review10Counter defines the gated counter with r's gate, undefined at
// the test's end.
func review10Counter(t *testing.T, r *spareEnv) {
	t.Helper()
	if _, err := r.tp.DefineGatedCounter(testGatedCounter, testGatedAuthorizer, r.gate); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, r.tp, testGatedCounter)
	undefineAtEnd(t, r.tp, testGatedAuthorizer)
}

// policySecretInto is the policySession of a TPM2_PolicySecret (its
// second handle).
func policySecretInto(cmd []byte) tpm2.TPMHandle {
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret || len(cmd) < 18 {
		return 0
	}
	return tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18]))
}

// Attack 1, the gated counter's increment: a spare kept in the Share is
// taken by IncrementGated (the policy counter's revocation, gateSession),
// not by a record. What must hold: the increments go into the spare (no
// session of its own) and move the counter exactly n; the spare is then
// gone, and the record after starts a session of its own and moves the
// anchor once; nothing left. Under A1 (the first NV_Increment run, then
// answered an error; or held on the bus and answered an error, then sent
// by A1 after IncrementGated returned): the counter moved at most once by
// the failed call, the held increment refused once the call returns (the
// revocation it would make later is what the spend prevents), and nothing
// left after the sweep.
func TestReview10GatedIncrementTakesTheSpare(t *testing.T) {
	for _, mode := range []string{"honest", "ran then refused", "held then replayed"} {
		t.Run(mode, func(t *testing.T) {
			r := newSpareEnv(t)
			review10Counter(t, r)
			before, err := r.tp.ReadCounter(testGatedCounter)
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var spare, proofIn tpm2.TPMHandle
			var held []byte
			starts, sent := 0, 0
			hook := func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				cc := swtpmtest.CommandCode(cmd)
				if cc == tpm2.TPMCCStartAuthSession {
					starts++
				}
				if h := policySecretInto(cmd); h != 0 && proofIn == 0 {
					proofIn = h
				}
				if cc != tpm2.TPMCCNVIncrement {
					return nil, nil, false
				}
				if sent++; sent > 1 {
					return nil, nil, false
				}
				switch mode {
				case "ran then refused":
					if _, err := next.Send(cmd); err != nil {
						return nil, err, true
					}
					return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
				case "held then replayed":
					held = bytes.Clone(cmd)
					return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
				}
				return nil, nil, false
			}
			const n = 3
			head := sha256.Sum256([]byte("after the increments"))
			was := r.anchor(t)
			var incErr error
			err = r.tp.Share(func() error {
				if err := r.read(); err != nil {
					return err
				}
				r.spare(t)
				spare = tpm.SpareHandle(r.tp)
				if spare == 0 {
					t.Fatal("no spare kept: not mounted")
				}
				r.bus.Set(hook)
				incErr = r.tp.IncrementGated(testGatedCounter, testGatedAuthorizer, r.gate, n)
				r.bus.Set(nil)
				if got := tpm.SpareHandle(r.tp); got != 0 {
					t.Errorf("the spare 0x%x is still kept after the increments took it", uint32(got))
				}
				_, _, err := r.record(t, head[:])
				return err
			})
			if err != nil {
				t.Fatalf("the record after the increments: %v", err)
			}
			if held != nil {
				rsp, err := r.bus.Next.Send(held)
				if err == nil && len(rsp) >= 10 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
					t.Error("A1's held NV_Increment ran after IncrementGated returned")
				}
			}
			after, err := r.tp.ReadCounter(testGatedCounter)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: proof into 0x%08x (spare 0x%08x), %d StartAuthSessions in the increments, counter %d to %d: %v", mode, uint32(proofIn), uint32(spare), starts, before, after, incErr)
			if proofIn != spare {
				t.Errorf("the increment's proof went into 0x%08x, not the spare 0x%08x", uint32(proofIn), uint32(spare))
			}
			switch mode {
			case "honest":
				if incErr != nil {
					t.Fatal(incErr)
				}
				if after != before+n {
					t.Errorf("counter moved %d, want %d", after-before, n)
				}
				if starts > 1 {
					t.Errorf("%d StartAuthSessions in the increments (the one-use session of the gate's authorization at most)", starts)
				}
			default:
				if incErr == nil {
					t.Error("an increment answered an error, yet IncrementGated succeeded")
				}
				if want := before + map[string]uint64{"ran then refused": 1, "held then replayed": 0}[mode]; after != want {
					t.Errorf("counter at %d, want %d", after, want)
				}
			}
			if now := r.anchor(t); !bytes.Equal(now, chained(was, head[:])) {
				t.Errorf("anchor %x, want the head once", now)
			}
			sweepAndCheck(t, r)
		})
	}
}

// Attack 1, a spare still holding a policy: the keyed session authorized
// its command (Uses moved, the TPM reset its policy), then a policy
// command went into it again (an fn that sends one command more, a
// caller applying a step after its use), and the caller spares it. What
// must hold, as for a session that authorized nothing after its policy
// (TestSpareNotKeptOrNotTaken's "unused"): the record still works (the
// proof in a session of its own, or in one that holds nothing else), the
// anchor moved once, nothing left. Spare keys its decision on Uses alone,
// so a session holding PolicyAuthValue applied after the unseal is kept,
// the gate's proof goes in beside it, the digest is not the anchor's
// policy, and the honest record's extend is refused (TPM_RC_POLICY_FAIL).
// No caller of withFreshSession applies a policy after its command today
// (agent.TestReview10EveryOperationProvesOnlyInACleanSession): a latent
// flaw of Spare's contract, not reachable from the agent.
func TestReview10SpareWithAPolicyAfterItsCommand(t *testing.T) {
	r := newSpareEnv(t)
	was := r.anchor(t)
	head := sha256.Sum256([]byte("record"))
	err := r.tp.Share(func() error {
		if err := r.read(); err != nil {
			return err
		}
		ps, uses := r.used(t)
		if err := ps.PolicyAuthValue(); err != nil { // a step after the command
			return err
		}
		if err := ps.Spare(uses); err != nil {
			return err
		}
		kept := tpm.SpareHandle(r.tp) != 0
		_, h, err := r.record(t, head[:])
		t.Logf("kept %v, the record's session 0x%08x: %v", kept, uint32(h), err)
		return err
	})
	if err != nil && !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Logf("(not a policy refusal: %v)", err)
	}
	r.recordedOnce(t, err, was, head[:])
}
