package tpm_test

// Review 11: the shared audit session kept between Shares
// (tpm.TPM.KeepShared): its key cleared on every path that ends it, and no
// flush of a number another session holds by then.

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Attack 7: every path that ends the kept session clears its session key
// (the slice the session authorized with, not a copy): DropKept, a flush of
// its handle through provd, its slot given up to a StartAuthSession
// between Shares, a moved generation (a reset) met by the next Share, a
// forged TPM_RC_REFERENCE on its first use (made again in a new session),
// and a failed first use (a forged answer).
func TestReview11KeptKeyClearedOnEveryEnd(t *testing.T) {
	for _, c := range []struct {
		name string
		end  func(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus)
	}{
		{"DropKept", func(t *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) {
			if err := env.TPM.DropKept(); err != nil {
				t.Fatal(err)
			}
		}},
		{"flushed through provd", func(t *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) {
			if err := env.TPM.Flush(env.TPM.SharedHandle()); err != nil {
				t.Fatal(err)
			}
		}},
		{"slot given up between Shares", func(t *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) {
			var closers []func() error
			for range 2 {
				_, c, err := tpm2.HMACSession(env.TPM, tpm2.TPMAlgSHA256, 16)
				if err != nil {
					t.Fatal(err)
				}
				closers = append(closers, c)
			}
			for _, c := range closers {
				if err := c(); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"reset, then the next Share", func(t *testing.T, env *swtpmtest.Env, _ *swtpmtest.Bus) {
			env.Reset()
			if err := readShared(env.TPM); err != nil {
				t.Fatal(err)
			}
		}},
		{"forged REFERENCE after the TPM ran the read", func(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus) {
			fired := false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCPCRRead {
					return nil, nil, false
				}
				fired = true
				if _, err := next.Send(cmd); err != nil {
					return nil, err, true
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCReferenceS0), nil, true
			})
			err := readShared(env.TPM)
			bus.Set(nil)
			if err != nil || !fired {
				t.Fatalf("the read made again in a new session: %v (fired %v)", err, fired)
			}
		}},
		{"forged answer on its first use", func(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus) {
			fired := false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCPCRRead {
					return nil, nil, false
				}
				fired = true
				rsp, err := next.Send(cmd)
				if err == nil {
					rsp = append([]byte(nil), rsp...)
					rsp[len(rsp)-1] ^= 1 // the response HMAC's last byte
				}
				return rsp, err, true
			})
			err := readShared(env.TPM)
			bus.Set(nil)
			if err == nil {
				t.Fatal("a changed answer was taken")
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, bus, _ := keptShareEnv(t)
			if err := readShared(env.TPM); err != nil {
				t.Fatal(err)
			}
			key := tpm.Review11KeptKey(env.TPM)
			if len(key) == 0 || bytes.Equal(key, make([]byte, len(key))) {
				t.Fatalf("setup: kept session key %x", key)
			}
			c.end(t, env, bus)
			if !bytes.Equal(key, make([]byte, len(key))) {
				t.Errorf("the ended kept session's key is still in memory: %x", key)
			}
			if err := readShared(env.TPM); err != nil {
				t.Errorf("the next Share: %v", err)
			}
			ownersSweep(t, env.TPM) // a kept session given up is forgotten (review 12)
		})
	}
}

// Attack 5: a reset between Shares hands the kept session's number out
// again, here to a session of provd's own started before any Share. Ending
// the kept session then (DropKept, as zeroize and Close do; or the next
// Share adopting it) never flushes that session: it still works after.
func TestReview11KeptNumberReusedAfterResetIsNotFlushed(t *testing.T) {
	for _, end := range []string{"DropKept", "next Share"} {
		t.Run(end, func(t *testing.T) {
			env, _, _ := keptShareEnv(t)
			tp := env.TPM
			if err := readShared(tp); err != nil {
				t.Fatal(err)
			}
			kept := tp.SharedHandle()
			env.Reset()
			s, closer, err := tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Audit())
			if err != nil {
				t.Fatal(err)
			}
			defer closer()
			if s.Handle() != kept {
				t.Fatalf("the new session is 0x%x, the kept one was 0x%x: the number was not reused", s.Handle(), kept)
			}
			switch end {
			case "DropKept":
				if err := tp.DropKept(); err != nil {
					t.Errorf("DropKept: %v", err)
				}
			default:
				if err := readShared(tp); err != nil {
					t.Errorf("the next Share: %v", err)
				}
			}
			if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp, s); err != nil {
				t.Errorf("the session at the reused number no longer works after the kept one ended: %v", err)
			}
		})
	}
}
