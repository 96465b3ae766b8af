package agent

// Review 12: the mend of review 11 (commit ef3b0c6) attacked through the
// daemon's Agent on the real swtpm: the kept shared session's first use
// in a request (a read made again after TPM_RC_REFERENCE_S*, anything
// else probed with TPM2_GetRandom first).

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review12Resume is a suspend and resume the daemon does not see (behind
// /dev/tpm0: the OS's TPM2_Shutdown(STATE), firmware's
// TPM2_Startup(STATE)): loaded sessions and objects are gone, their
// numbers free, and no TPM_RC_INITIALIZE tells provd.
func review12Resume(t *testing.T, s review11Side) {
	t.Helper()
	if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUState}).Execute(s.bus.Next); err != nil {
		t.Fatalf("Shutdown(STATE): %v", err)
	}
	s.env.Reset()
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(s.bus.Next); err != nil {
		t.Fatalf("Startup(STATE): %v", err)
	}
}

// review12Honest: an error an honest event must never give: forged (exit
// 15), tampered (exit 14), the policy not satisfied (exit 3), the TPM out
// of memory (exit 10), or a bad authorization (exit 11).
func review12Honest(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, k := range []error{tpm.ErrResponseForged, api.ErrTampered, tpm.ErrPolicyNotSatisfied, tpm.ErrNoMemory, tpm.ErrBadAuth} {
		if errors.Is(err, k) {
			t.Errorf("%s: an honest suspend and resume reported as %v (exit %d): %v", what, k, api.ExitCode(err), err)
			return
		}
	}
}

// Attack 3a: a suspend and resume the daemon does not see, between two
// requests, before every daemon operation (the shared session kept from
// the request before). Every operation works: its kept session's first
// use is a read refused TPM_RC_REFERENCE_S* and made again, or a probe
// refused and a new session; nothing forged or tampered, nothing left
// beyond what the daemon holds, the trail verifies, the next works; and
// provd never flushes the kept number once a policy session of its own
// holds that slot.
//
// Failed before the mend (review 12): key create rsa and dup export start a policy session
// (the spare for their record's proof) before their first use of the kept
// session; it takes slot 0, the lost shared session's; the record's anchor
// read in the kept session is refused TPM_RC_HANDLE (S1), not
// REFERENCE_S*, and the give-up flushes 0x02000000, which swtpm applies to
// the spare 0x03000000; the record's PolicySecret then fails
// TPM_RC_HANDLE and the record layer starts over (the request works, at
// the cost of a flush of provd's own session that the design says never
// happens in one generation).
func TestReview12UnseenResumeBeforeEveryOperation(t *testing.T) {
	t.Parallel()
	A, B := review11Daemon(t, false), review11Daemon(t, false)
	lockA, lockB := swtpmtest.LockoutCounter(t, A.bus.Next), swtpmtest.LockoutCounter(t, B.bus.Next)
	for _, op := range review11Ops(t, A, B) {
		s, lock := A, lockA
		if op.onB {
			s, lock = B, lockB
		}
		kept := review11Warm(t, s)
		review12Resume(t, s)
		var victims []tpm2.TPMHandle
		s.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if v := review12Victim(t, next, cmd, kept); v != 0 {
				victims = append(victims, v)
			}
			return nil, nil, false
		})
		err := op.fn()
		s.bus.Set(nil)
		for _, v := range victims {
			t.Errorf("%s: after an unseen suspend and resume, provd flushed the kept shared session's number 0x%08x, which by then was its own policy session 0x%08x's slot",
				op.name, uint32(kept), uint32(v))
		}
		if err != nil {
			t.Errorf("%s after an unseen suspend and resume: %v (exit %d)", op.name, err, api.ExitCode(err))
		}
		review12Honest(t, op.name, err)
		review11Clean(t, op.name+" after an unseen resume", s, lock)
		review11Again(t, op.name, op.fn, err)
	}
}

// Attack 3b: as 3a, but a key use (a sign, which keeps its policy session)
// comes between the unseen suspend and resume and the operation: the sign
// works (its kept policy session, lost, is started again), and that new
// session takes the lowest free number, the lost shared session's slot.
// The next operation's first use of the kept shared session then meets
// the daemon's own policy session in its slot (swtpm shares one slot
// number between an HMAC and a policy session): not TPM_RC_REFERENCE_S*
// but TPM_RC_HANDLE at that session's index. The honest event must still
// cost nothing: the operation works, the sign after it works in the policy
// session the daemon holds, nothing forged or tampered, and provd never
// flushes the kept number while its own policy session holds that slot.
//
// Failed before the mend (review 12): as TestReview12UnseenResumeBeforeEveryOperation, and
// for key create ecc too: the flush takes the daemon's kept key-use
// policy session (its next sign meets REFERENCE and starts another).
func TestReview12UnseenResumeThenKeyUse(t *testing.T) {
	t.Parallel()
	A, B := review11Daemon(t, false), review11Daemon(t, false)
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 7})
	for _, s := range []review11Side{A, B} {
		if _, err := s.a.CreateKey(ctx, api.CreateRequest{Name: "s12", Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	sign := func(s review11Side) error {
		d := sha256.Sum256([]byte("review 12"))
		_, err := s.a.Sign(ctx, "s12", d[:], api.SignOptions{})
		return err
	}
	lockA, lockB := swtpmtest.LockoutCounter(t, A.bus.Next), swtpmtest.LockoutCounter(t, B.bus.Next)
	failed := 0
	for _, op := range review11Ops(t, A, B) {
		s, lock := A, lockA
		if op.onB {
			s, lock = B, lockB
		}
		if err := sign(s); err != nil {
			t.Fatalf("%s: setup sign: %v", op.name, err)
		}
		kept := review11Warm(t, s)
		review12Resume(t, s)
		if err := sign(s); err != nil {
			t.Errorf("%s: the sign after an unseen suspend and resume: %v", op.name, err)
		}
		// What the first use of the kept session in the operation meets,
		// and every flush provd sends of the kept number while the TPM
		// holds a policy session of provd's in that slot (and no HMAC
		// session at that number): that flush takes the policy session.
		var first []string
		var victims []tpm2.TPMHandle
		s.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if v := review12Victim(t, next, cmd, kept); v != 0 {
				victims = append(victims, v)
				return nil, nil, false
			}
			if cc, i := review11SessionIndex(cmd, kept); i >= 0 && len(first) == 0 {
				rsp, err := next.Send(cmd)
				if err == nil && len(rsp) >= 10 {
					first = append(first, fmt.Sprintf("0x%x: 0x%x", uint32(cc), uint32(rsp[6])<<24|uint32(rsp[7])<<16|uint32(rsp[8])<<8|uint32(rsp[9])))
				}
				return rsp, err, true
			}
			return nil, nil, false
		})
		err := op.fn()
		s.bus.Set(nil)
		t.Logf("%s: the kept session 0x%08x's first use %v; err %v", op.name, uint32(kept), first, err)
		if err != nil {
			failed++
			t.Errorf("%s after an unseen suspend and resume and a sign: %v (exit %d)", op.name, err, api.ExitCode(err))
		}
		review12Honest(t, op.name, err)
		for _, v := range victims {
			t.Errorf("%s: after an unseen suspend and resume, provd flushed the kept shared session's number 0x%08x, which by then was its own policy session 0x%08x's slot",
				op.name, uint32(kept), uint32(v))
		}
		if op.name == "provision --force" {
			if _, err := s.a.CreateKey(ctx, api.CreateRequest{Name: "s12", Type: "ecc-p256"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := sign(s); err != nil {
			t.Errorf("%s: the sign after it: %v", op.name, err)
		}
		review11Clean(t, op.name+" after an unseen resume and a sign", s, lock)
		review11Again(t, op.name, op.fn, err)
	}
	t.Logf("%d operations failed", failed)
}

// Attack 3c: the trail's verification (the anchor's Read, which tells a
// refused read apart by TPM2_NV_ReadPublic) after an unseen suspend and
// resume, with and without a sign between: the trail verifies, never
// reported tampered or forged.
func TestReview12UnseenResumeAuditVerify(t *testing.T) {
	t.Parallel()
	for _, withSign := range []bool{false, true} {
		s := review11Daemon(t, false)
		ctx := api.WithCaller(context.Background(), api.Caller{UID: 7})
		if _, err := s.a.CreateKey(ctx, api.CreateRequest{Name: "s12", Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("review 12"))
		if _, err := s.a.Sign(ctx, "s12", d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
		review11Warm(t, s)
		review12Resume(t, s)
		if withSign {
			if _, err := s.a.Sign(ctx, "s12", d[:], api.SignOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.a.AuditVerify(context.Background()); err != nil {
			t.Errorf("sign between %v: the trail after an unseen suspend and resume: %v (exit %d)", withSign, err, api.ExitCode(err))
			review12Honest(t, "audit verify", err)
		}
		if _, err := s.a.Status(context.Background()); err != nil {
			t.Errorf("sign between %v: status: %v (exit %d)", withSign, err, api.ExitCode(err))
		}
		review11Clean(t, "audit verify", s, swtpmtest.LockoutCounter(t, s.bus.Next))
	}
}

// review12Loaded reports whether the TPM (tp, behind the bus) has session
// h loaded (TPM_HT_LOADED_SESSION lists HMAC and policy sessions alike).
func review12Loaded(t *testing.T, tp transport.TPM, h tpm2.TPMHandle) bool {
	t.Helper()
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x02000000, PropertyCount: 64}).Execute(tp)
	if err != nil {
		t.Fatalf("GetCapability(loaded sessions): %v", err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(hs.Handle, h)
}

// review12Victim: cmd is a FlushContext of kept's number while the TPM
// holds no HMAC session there but a policy session in its slot (swtpm
// numbers both kinds from one set of slots): the policy session, which
// that flush takes; 0 otherwise.
func review12Victim(t *testing.T, next transport.TPM, cmd []byte, kept tpm2.TPMHandle) tpm2.TPMHandle {
	t.Helper()
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCFlushContext || len(cmd) < 14 || tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != kept {
		return 0
	}
	policy := tpm2.TPMHandle(0x03000000 | uint32(kept)&0xffffff)
	if !review12Loaded(t, next, kept) && review12Loaded(t, next, policy) {
		return policy
	}
	return 0
}
