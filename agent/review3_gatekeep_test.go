package agent_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review3Provision is provision on a fresh state directory, as UID uid:
// its record follows the new trail's first (gateKeep's path).
func review3Provision(ag *agent.Agent, uid int) error {
	ctx := api.WithCaller(context.Background(), api.Caller{UID: uid})
	_, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, AllowResettable: true})
	return err
}

// review3ArmedHook is f's hook, counting from the command after the new
// trail's first extend (the genesis 'audit-anchor' record's NV_Extend)
// when afterGenesis, from the first command otherwise.
func review3ArmedHook(f busFault, afterGenesis bool) swtpmtest.Hook {
	inner := f.hook()
	var mu sync.Mutex
	armed := !afterGenesis
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		a := armed
		mu.Unlock()
		if !a {
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend {
				rsp, err := next.Send(cmd)
				mu.Lock()
				armed = true
				mu.Unlock()
				return rsp, err, true
			}
			return nil, nil, false
		}
		return inner(next, cmd)
	}
}

// A1 on every command of the kept path of provision's record (gateKeep:
// the gate kept loaded and the genesis extend's policy session going on to
// the provision record's proof) and on the genesis proof and extend
// themselves: each forged, refused after the TPM ran it, its answer lost or
// changed, once and every time. Held when: nothing is left loaded, the
// provision record is in the trail or pending exactly once, and the trail
// verifies on an honest bus (repair --anchor-last only after a fault on an
// extend).
func TestReview3ProvisionKeptPathUnderBusFaults(t *testing.T) {
	t.Parallel()
	type target struct {
		busFault
		afterGenesis bool
	}
	var targets []target
	for _, tg := range []faultTarget{{tpm2.TPMCCNVRead, 1}, {tpm2.TPMCCPolicySecret, 1}, {tpm2.TPMCCPolicyCommandCode, 1},
		{tpm2.TPMCCNVExtend, 1}, {tpm2.TPMCCFlushContext, 1}, {tpm2.TPMCCFlushContext, 2}} {
		targets = append(targets, target{busFault{cc: tg.cc, nth: tg.nth}, true})
	}
	for _, tg := range []faultTarget{{tpm2.TPMCCPolicySecret, 1}, {tpm2.TPMCCPolicyCommandCode, 1}, {tpm2.TPMCCNVExtend, 1}} {
		targets = append(targets, target{busFault{cc: tg.cc, nth: tg.nth}, false})
	}
	for _, tg := range targets {
		for _, kind := range []string{"forge", "forgeWarn", "passForge", "lose", "flip"} {
			for _, always := range []bool{false, true} {
				if always && tg.cc == tpm2.TPMCCFlushContext {
					continue
				}
				f := tg.busFault
				f.kind, f.always = kind, always
				where := "genesis"
				if tg.afterGenesis {
					where = "kept"
				}
				name := fmt.Sprintf("%s/%s%d-%s", where, faultCCName[f.cc], f.nth, kind)
				if always {
					name += "-always"
				}
				afterGenesis := tg.afterGenesis
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					b := &swtpmtest.Bus{}
					env := swtpmtest.Start(t, swtpmtest.WithBus(b))
					dir := stateDir(t)
					ag := newAgent(t, env, dir)
					b.Set(review3ArmedHook(f, afterGenesis))
					err := review3Provision(ag, 4242)
					b.Set(nil)
					t.Logf("provision under the fault: %v (exit %d)", err, api.ExitCode(err))
					t.Logf("SUMMARY %s exit=%d forged=%v badauth=%v", t.Name(), api.ExitCode(err), errors.Is(err, tpm.ErrResponseForged), errors.Is(err, tpm.ErrBadAuth))
					if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) != 0 {
						t.Errorf("left in the TPM after provision under the fault: %x %v", left, lerr)
					}
					if errors.Is(err, api.ErrNotProvisioned) || err != nil && !strings.Contains(err.Error(), "audit") {
						// Provision itself failed: provision again, as an operator would.
						if perr := func() error {
							ctx := api.WithCaller(context.Background(), api.Caller{UID: 7})
							_, e := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, AllowResettable: true, Force: true})
							return e
						}(); perr != nil {
							t.Logf("provision again: %v", perr)
						}
					}
					checkTrailAfterFault(t, env, ag, dir, f, "provision")
				})
			}
		}
	}
}

// review3StartupClear starts the TPM at addr up (TPM2_Startup(CLEAR)) on a
// connection of its own, as a swtpm run with --flags startup-clear (or
// firmware) does when it comes back: provd then meets no TPM_RC_INITIALIZE,
// only its lost connection.
func review3StartupClear(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0}); err != nil {
		return err
	}
	rsp := make([]byte, 10)
	if _, err := io.ReadFull(c, rsp); err != nil {
		return err
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return fmt.Errorf("TPM2_Startup(CLEAR) answered 0x%x", rc)
	}
	return nil
}

// madeHandle is the handle a successful answer rsp to cmd made, if any.
func review3Made(cmd, rsp []byte) (tpm2.TPMHandle, bool) {
	if len(rsp) < 14 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return 0, false
	}
	switch swtpmtest.CommandCode(cmd) {
	case tpm2.TPMCCLoad, tpm2.TPMCCStartAuthSession, tpm2.TPMCCCreatePrimary, tpm2.TPMCCContextLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreateLoaded:
		return tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14])), true
	}
	return 0, false
}

// The new trail's gate and genesis policy session are kept with the TPM
// generation read AFTER the command that made them answered (gateKeep.keep
// and gateKeep.release call t.Generation() then, where
// PrepareGatedExtendOf reads it before the session's start). A power cut
// in that window, of a TPM that comes back started (swtpm --flags
// startup-clear, or firmware), moves the generation exactly once, at the
// probe inside keep/release: the handles made before it are then taken
// for this generation's, and drop (or again) flushes them by their number
// after a power cut provd has seen. The threat model: "after a reset,
// power cut or migration provd has seen, nothing kept is flushed by its
// number". Held when no FlushContext after the power cut names a handle
// from before it that was not made again since.
func TestReview3KeptHandleNotFlushedByNumberAfterAPowerCut(t *testing.T) {
	t.Parallel()
	for _, after := range []tpm2.TPMCC{tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCNVExtend} {
		t.Run("after the genesis "+faultCCName[after]+"'s answer", func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			ag := newAgent(t, env, stateDir(t))
			var mu sync.Mutex
			var lastLoad, lastPolicy tpm2.TPMHandle
			var before []tpm2.TPMHandle
			made := map[tpm2.TPMHandle]bool{}
			var stale []string
			fired, fireErr := false, error(nil)
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				cc := swtpmtest.CommandCode(cmd)
				if fired && cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 {
					h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
					if slices.Contains(before, h) && !made[h] {
						what := "the genesis policy session"
						if h == lastLoad {
							what = "the kept gate"
						}
						stale = append(stale, fmt.Sprintf("0x%08x (%s)", uint32(h), what))
					}
				}
				rsp, err := next.Send(cmd)
				if err != nil {
					return rsp, err, true
				}
				if h, ok := review3Made(cmd, rsp); ok {
					if fired {
						made[h] = true
					} else if cc == tpm2.TPMCCLoad {
						lastLoad = h
					} else if cc == tpm2.TPMCCStartAuthSession {
						if st, ok := swtpmtest.SessionType(cmd); ok && st == tpm2.TPMSEPolicy {
							lastPolicy = h
						}
					}
				}
				if fired && cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 {
					delete(made, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
				}
				gateOne := cc == after && (cc == tpm2.TPMCCNVExtend ||
					len(cmd) >= 4 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) == tpm2.TPMCCNVExtend)
				if !fired && gateOne && len(rsp) >= 10 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
					fired = true
					before = []tpm2.TPMHandle{lastLoad, lastPolicy}
					env.PowerCut()
					fireErr = review3StartupClear(env.Addr)
				}
				return rsp, nil, true
			})
			err := review3Provision(ag, 4242)
			b.Set(nil)
			mu.Lock()
			defer mu.Unlock()
			if !fired || fireErr != nil {
				t.Fatalf("not mounted: fired %v, %v", fired, fireErr)
			}
			t.Logf("provision with a power cut (TPM back started) after the genesis %s: %v (exit %d); kept before it: gate 0x%08x, session 0x%08x",
				faultCCName[after], err, api.ExitCode(err), uint32(lastLoad), uint32(lastPolicy))
			if len(stale) > 0 {
				t.Errorf("FAIL: after a power cut provd had seen (its connection lost), it flushed by number handles from before it: %v", stale)
			}
			if errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
				t.Errorf("an honest power cut called forged or a wrong value: %v", err)
			}
			if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) > 0 {
				t.Errorf("left in the TPM: %x %v", left, lerr)
			}
			if err != nil && !strings.Contains(err.Error(), "audit") {
				if perr := review3ProvisionForce(ag); perr != nil {
					t.Fatalf("provision again: %v", perr)
				}
			}
			if _, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("next"), PCRs: []int{7}}); err != nil {
				// The genesis line written, its extend lost with the power
				// cut: the officer's repair --anchor-last (as before gateKeep).
				t.Logf("the next operation: %v; audit repair --anchor-last, as an officer would", err)
				if _, rerr := ag.AuditRepair(context.Background(), true); rerr != nil {
					t.Fatalf("repair: %v", rerr)
				}
				if _, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("next"), PCRs: []int{7}}); err != nil {
					t.Fatalf("the next operation after the repair: %v", err)
				}
			}
			if _, err := ag.AuditVerify(context.Background()); err != nil {
				t.Fatalf("the trail: %v", err)
			}
		})
	}
}

func review3ProvisionForce(ag *agent.Agent) error {
	_, err := ag.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, AllowResettable: true, Force: true})
	return err
}

// TPM2_PolicyCommandCode carries no authorization session, so no TPM
// answers it TPM_RC_BAD_AUTH (session 1): that answer is the bus's. A1
// answering the kept path's PolicyCommandCode so (after passing it on, or
// not) makes provd report a wrong authorization value (tpm.ErrBadAuth,
// exit 11), which sends an operator after the state directory's values
// rather than the bus. Held when such an answer is reported as forged, or
// at least not as a wrong value. (The same holds for the genesis proof's
// PolicyCommandCode, on the path before gateKeep too.)
func TestReview3BadAuthOnACommandWithoutAuthIsNotAWrongValue(t *testing.T) {
	for _, kind := range []string{"forge", "passForge"} {
		t.Run(kind, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			ag := newAgent(t, env, stateDir(t))
			b.Set(review3ArmedHook(busFault{cc: tpm2.TPMCCPolicyCommandCode, nth: 1, kind: kind, always: true}, true))
			err := review3Provision(ag, 4242)
			b.Set(nil)
			t.Logf("provision with PolicyCommandCode answered BAD_AUTH (session 1) by A1: %v (exit %d)", err, api.ExitCode(err))
			if err == nil {
				t.Fatal("not mounted: provision succeeded")
			}
			if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == 11 {
				t.Errorf("FAIL: a BAD_AUTH answer to a command that has no authorization session is reported as a wrong value (exit %d), not as forged", api.ExitCode(err))
			}
			if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) > 0 {
				t.Errorf("left in the TPM: %x %v", left, lerr)
			}
		})
	}
}
