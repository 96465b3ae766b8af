package tpm_test

// Attacks on the probe of a refused authorization in a keyed HMAC session
// (tpm.authorizeChecked): after ErrBadAuth, provd sends TPM2_ReadPublic of
// the entity in the session's audit role; refused or forged, the refusal
// is ErrResponseForged; verified, it stays ErrBadAuth; any other outcome
// is neither. Each test says what it tries, and what must hold.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// isProbe: cmd is a TPM2_ReadPublic with a session (the probe).
func isProbe(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic &&
		tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions
}

// authOp is one of the two commands the shared session authorizes, run
// in a Share after a command that starts the shared session, with value
// as the entity's authValue (nil: the right one).
type authOp struct {
	name string
	cc   tpm2.TPMCC
	nh   int // the command's handles
	run  func(r *sharedAuthEnv, wrong bool) error
}

func probeOps() []authOp {
	return []authOp{
		{"quote", tpm2.TPMCCQuote, 1, func(r *sharedAuthEnv, wrong bool) error {
			return r.tp.Share(func() error {
				ak, err := r.tp.Load(r.srk, nil, r.akBlob)
				if err != nil {
					return err
				}
				defer r.tp.Flush(ak.Handle)
				v := r.akAuth
				if wrong {
					v = bytes.Clone(r.akAuth)
					v[0] ^= 1
				}
				nonce := sha256.Sum256([]byte("nonce"))
				_, _, err = r.tp.Quote(ak, v, nonce[:], sharedAuthSel)
				return err
			})
		}},
		{"gate proof", tpm2.TPMCCPolicySecret, 2, func(r *sharedAuthEnv, wrong bool) error {
			gate := r.gate
			if wrong {
				// A gate-shaped key loaded with a value not its own:
				// the TPM refuses its PolicySecret before it looks at
				// the index.
				bad := bytes.Clone(r.akAuth)
				bad[0] ^= 1
				g, err := r.tp.LoadGate(r.srk, r.akBlob, bad)
				if err != nil {
					return err
				}
				defer r.tp.Flush(g.Handle)
				gate = g
			}
			return r.tp.Share(func() error {
				if err := r.read(); err != nil {
					return err
				}
				h := sha256.Sum256([]byte("head"))
				ge, err := r.tp.PrepareGatedExtendOf(r.x, gate, h[:])
				if err != nil {
					return err
				}
				return errors.Join(ge.Extend(), ge.Close())
			})
		}},
	}
}

// A1 passes the command on (the TPM runs it, the shared session's nonces
// move), answers it with first in place of the TPM's answer (RETRY: the
// channel sends it again and the TPM refuses the copy, BAD_AUTH; or
// BAD_AUTH itself), then answers the probe with an error of its own making
// (the probe's error has no HMAC either). Never a wrong authorization
// value (exit 11), as the value is right: only a probe that verifies keeps
// ErrBadAuth (found by review: any outcome but a refusal or a forged
// answer kept it).
func TestProbeForgedProbeAnswerIsNotBadAuth(t *testing.T) {
	r := newSharedAuthEnv(t)
	probeAnswers := []struct {
		name string
		fn   func(next transport.TPM, cmd []byte) ([]byte, error)
	}{
		{"SESSION_MEMORY", func(transport.TPM, []byte) ([]byte, error) {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSessionMemory), nil
		}},
		{"REFERENCE_S0", func(transport.TPM, []byte) ([]byte, error) {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCReferenceS0), nil
		}},
		{"FAILURE", func(transport.TPM, []byte) ([]byte, error) {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil
		}},
		{"RETRY every time", func(transport.TPM, []byte) ([]byte, error) {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil
		}},
		{"dropped", func(transport.TPM, []byte) ([]byte, error) {
			return nil, errors.New("A1 dropped the probe")
		}},
	}
	for _, op := range probeOps() {
		for _, first := range []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCBadAuth} {
			for _, pa := range probeAnswers {
				t.Run(fmt.Sprintf("%s/%v/probe %s", op.name, first, pa.name), func(t *testing.T) {
					was := r.anchor(t)
					var mu sync.Mutex
					ran, probes := 0, 0
					r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
						mu.Lock()
						defer mu.Unlock()
						switch {
						case swtpmtest.CommandCode(cmd) == op.cc:
							ran++
							if ran > 1 {
								return nil, nil, false
							}
							if _, err := next.Send(cmd); err != nil {
								return nil, err, true
							}
							return swtpmtest.ErrorAnswer(first), nil, true
						case ran > 0 && isProbe(cmd) && (probes == 0 || pa.name == "RETRY every time"):
							probes++
							rsp, err := pa.fn(next, cmd)
							return rsp, err, true
						}
						return nil, nil, false
					})
					err := op.run(r, false)
					r.bus.Set(nil)
					t.Logf("%v; exit-kind: badauth=%v forged=%v", err, errors.Is(err, tpm.ErrBadAuth), errors.Is(err, tpm.ErrResponseForged))
					if ran == 0 || probes == 0 {
						t.Fatalf("attack not mounted (command %d, probe %d)", ran, probes)
					}
					if err == nil {
						t.Fatal("succeeded")
					}
					if errors.Is(err, tpm.ErrBadAuth) {
						t.Errorf("the TPM ran the %s (the value is right), A1 forged its answer and the probe's: reported as a wrong authorization value", op.name)
					}
					if now := r.anchor(t); !bytes.Equal(now, was) {
						t.Errorf("the anchor moved: %x, was %x", now, was)
					}
					sweptAsAsked(t, r.tp, r.gate.Handle)
				})
			}
		}
	}
}

// A wrong value, and the TPM reset, power-cut or migrated right after it
// refused the command, before the probe. Honest: never called forged; the shared session is
// never flushed by its number once the generation moved (the number may
// be another's); nothing is left once swept.
func TestProbeHonestEventAfterTheRefusal(t *testing.T) {
	for _, ev := range swtpmtest.Events {
		for _, op := range probeOps() {
			t.Run(ev+"/"+op.name, func(t *testing.T) {
				r := newSharedAuthEnv(t)
				var mu sync.Mutex
				var shared tpm2.TPMHandle
				var flushed, flushedBeforeStart []tpm2.TPMHandle
				var after []string
				fired, started := false, false
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					cc := swtpmtest.CommandCode(cmd)
					if fired {
						after = append(after, fmt.Sprintf("%#x", uint32(cc)))
						if cc == tpm2.TPMCCStartAuthSession {
							started = true
						}
						if cc == tpm2.TPMCCFlushContext {
							h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
							flushed = append(flushed, h)
							if !started {
								// Before any new session could take the
								// number (a later flush of it is of
								// provd's new shared session).
								flushedBeforeStart = append(flushedBeforeStart, h)
							}
						}
					}
					if cc != op.cc || fired {
						return nil, nil, false
					}
					fired = true
					shared = swtpmtest.LastSession(cmd, op.nh)
					rsp, err := next.Send(cmd)
					if err == nil && len(rsp) >= 10 {
						rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
						if !errors.Is(rc, tpm2.TPMRCBadAuth) && !errors.Is(rc, tpm2.TPMRCAuthFail) {
							t.Errorf("the TPM answered the wrong value %v, want BAD_AUTH", rc)
						}
					}
					r.env.Event(ev)
					return rsp, err, true
				})
				err := op.run(r, true)
				r.bus.Set(nil)
				t.Logf("%v; after the event: %v; flushed %x (shared 0x%08x)", err, after, flushed, uint32(shared))
				if !fired {
					t.Fatal("not mounted")
				}
				if err == nil {
					t.Fatal("a wrong value succeeded")
				}
				if errors.Is(err, tpm.ErrResponseForged) {
					t.Errorf("an honest %s after a wrong value called forged: %v", ev, err)
				}
				if ev != "migrate" && slices.Contains(flushedBeforeStart, shared) {
					t.Errorf("the old shared session 0x%08x was flushed by its number after a %s", uint32(shared), ev)
				}
				r.tp.NeedsSweep()
				left, lerr := r.tp.Leftovers()
				if lerr != nil {
					t.Fatal(lerr)
				}
				for _, h := range left {
					if h == r.gate.Handle && ev == "migrate" {
						continue
					}
					if ev == "migrate" {
						t.Errorf("0x%08x left after a migration", uint32(h))
					}
					_ = r.tp.Flush(h)
				}
			})
		}
	}
}

// Warnings a TPM gives before it runs a command (RETRY, YIELDED, TESTING,
// here answered in its place without passing it on, as swtpm does), on
// the command and on the probe. With the right value the operation
// works; with a wrong one it is ErrBadAuth, never forged.
func TestProbeHonestWarnings(t *testing.T) {
	r := newSharedAuthEnv(t)
	for _, op := range probeOps() {
		for _, rc := range []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting} {
			for _, on := range []string{"command", "probe"} {
				for _, wrong := range []bool{false, true} {
					if on == "probe" && !wrong {
						continue // no probe without a refusal
					}
					t.Run(fmt.Sprintf("%s/%v on the %s/wrong=%v", op.name, rc, on, wrong), func(t *testing.T) {
						n := 0
						r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
							match := swtpmtest.CommandCode(cmd) == op.cc
							if on == "probe" {
								match = isProbe(cmd)
							}
							if !match || n > 0 {
								return nil, nil, false
							}
							n++
							return swtpmtest.ErrorAnswer(rc), nil, true
						})
						err := op.run(r, wrong)
						r.bus.Set(nil)
						t.Logf("%v", err)
						if n == 0 {
							t.Fatal("not mounted")
						}
						switch {
						case !wrong && err != nil:
							t.Errorf("an honest %v before the %s: %v", rc, op.name, err)
						case wrong && !errors.Is(err, tpm.ErrBadAuth):
							t.Errorf("a wrong value with an honest %v on the %s: %v, want ErrBadAuth", rc, on, err)
						case errors.Is(err, tpm.ErrResponseForged):
							t.Errorf("an honest %v called forged: %v", rc, err)
						}
						sweptAsAsked(t, r.tp, r.gate.Handle)
					})
				}
			}
		}
	}
}

// A1 renames the AK's load (its answer's handle has no HMAC; the name in
// its parameters is authenticated) to another loaded object's handle, one
// with another value (here the gate). The TPM refuses the quote honestly
// (the object at the handle is not the AK). The probe, TPM2_ReadPublic
// of the AK's name at that handle in the session's audit role, is refused
// (the TPM keys its command HMAC with the name it holds): forged, not a
// wrong value (found by review: the GetRandom probe verified, exit 11).
func TestProbeRenamedLoadHandleIsForged(t *testing.T) {
	r := newSharedAuthEnv(t)
	var realAK tpm2.TPMHandle
	renamed := false
	r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad || renamed {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		if err != nil || len(rsp) < 14 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return rsp, err, true
		}
		renamed = true
		realAK = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
		return withHandle(rsp, uint32(r.gate.Handle)), nil, true
	})
	var quoteErr error
	err := r.tp.Share(func() error {
		ak, err := r.tp.Load(r.srk, nil, r.akBlob)
		if err != nil {
			return err
		}
		r.bus.Set(nil)
		nonce := sha256.Sum256([]byte("nonce"))
		_, _, quoteErr = r.tp.Quote(ak, r.akAuth, nonce[:], sharedAuthSel)
		return nil
	})
	r.bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("quote through a renamed AK handle: %v", quoteErr)
	if !renamed {
		t.Fatal("not mounted")
	}
	if quoteErr == nil {
		t.Fatal("quoted with the gate")
	}
	if errors.Is(quoteErr, tpm.ErrBadAuth) || !errors.Is(quoteErr, tpm.ErrResponseForged) {
		t.Errorf("the bus renamed the AK's handle: %v, want ErrResponseForged", quoteErr)
	}
	if err := r.tp.Flush(realAK); err != nil {
		t.Fatal(err)
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

// The probe's refusal (the session's nonces moved) is a refused HMAC in a
// session that authorizes nothing: it must not count against the TPM's
// dictionary-attack protection, nor may the refused copy of the command
// (the AK and gates are noDA). TPM_PT_LOCKOUT_COUNTER before and after
// A1's forged RETRY, repeated.
func TestProbeRefusalsDoNotCount(t *testing.T) {
	r := newSharedAuthEnv(t)
	before := swtpmtest.LockoutCounter(t, r.bus.Next)
	for _, op := range probeOps() {
		for range 3 {
			n := 0
			r.bus.Set(swtpmtest.RanThenAnswered(op.cc, tpm2.TPMRCRetry, &n))
			err := op.run(r, false)
			r.bus.Set(nil)
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("%s after a forged RETRY: %v, want forged", op.name, err)
			}
			sweptAsAsked(t, r.tp, r.gate.Handle)
		}
	}
	if after := swtpmtest.LockoutCounter(t, r.bus.Next); after != before {
		t.Errorf("lockout counter %d, was %d: the refusals counted", after, before)
	}
}

// The generation moves in the middle of the authorized command (a
// migration: the connection breaks before the command leaves, the TPM
// keeps its sessions): A1 passes it on and forges RETRY. Forged; the
// shared session, whose generation is old, is not flushed by number but
// checked (dropShared), refused (its nonces moved), forgotten, and the
// sweep asked for flushes it. With a wrong value instead (no A1):
// ErrBadAuth, and the shared session flushed, nothing left unswept.
func TestProbeGenerationMovesUnderTheCommand(t *testing.T) {
	for _, op := range probeOps() {
		for _, wrong := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/wrong=%v", op.name, wrong), func(t *testing.T) {
				r := newSharedAuthEnv(t)
				gen := r.tp.Generation()
				n := 0
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) != op.cc {
						return nil, nil, false
					}
					n++
					if n > 1 {
						return nil, nil, false
					}
					r.env.Migrate()
					rsp, err := next.Send(cmd)
					if wrong || err != nil {
						return rsp, err, true
					}
					return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
				})
				err := op.run(r, wrong)
				r.bus.Set(nil)
				t.Logf("%v (generation %d -> %d)", err, gen, r.tp.Generation())
				if n == 0 {
					t.Fatal("not mounted")
				}
				if r.tp.Generation() == gen {
					t.Fatal("the generation did not move")
				}
				if wrong && !errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("a wrong value across a migration: %v, want ErrBadAuth", err)
				}
				if !wrong && !errors.Is(err, tpm.ErrResponseForged) {
					t.Errorf("A1's RETRY across a migration: %v, want forged", err)
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
			})
		}
	}
}

// The probe runs only after a refused authorization in the shared
// session: never after a success, nor after another failure (A1's forged
// POLICY_FAIL, SESSION_MEMORY), nor in a one-use session. It runs while
// the shared session is still in use (no StartAuthSession or other
// command between the refusal and it), with one session of its own on
// the command, the shared one.
func TestProbeOnlyAfterBadAuth(t *testing.T) {
	r := newSharedAuthEnv(t)
	for _, op := range probeOps() {
		for _, c := range []struct {
			name  string
			rc    tpm2.TPMRC
			wrong bool
			probe bool
		}{
			{"success", 0, false, false},
			{"forged POLICY_FAIL", tpm2.TPMRCPolicyFail, false, false},
			{"forged SESSION_MEMORY", tpm2.TPMRCSessionMemory, false, false},
			{"wrong value", 0, true, true},
		} {
			t.Run(op.name+"/"+c.name, func(t *testing.T) {
				var mu sync.Mutex
				var log []tpm2.TPMCC
				var probeSessions []tpm2.TPMHandle
				var shared tpm2.TPMHandle
				done := false
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					cc := swtpmtest.CommandCode(cmd)
					log = append(log, cc)
					if isProbe(cmd) {
						probeSessions = swtpmtest.Sessions(cmd, 1)
					}
					if cc == op.cc {
						shared = swtpmtest.LastSession(cmd, op.nh)
					}
					if cc != op.cc || c.rc == 0 || done {
						return nil, nil, false
					}
					done = true
					if _, err := next.Send(cmd); err != nil {
						return nil, err, true
					}
					return swtpmtest.ErrorAnswer(c.rc), nil, true
				})
				err := op.run(r, c.wrong)
				r.bus.Set(nil)
				i := slices.Index(log, op.cc)
				t.Logf("%v; commands from the %s on: %v", err, op.name, log[max(i, 0):])
				probed := probeSessions != nil
				if probed != c.probe {
					t.Errorf("probe sent: %v, want %v", probed, c.probe)
				}
				if c.probe {
					if i < 0 || i+1 >= len(log) || log[i+1] != tpm2.TPMCCReadPublic {
						t.Errorf("the probe does not follow the refused command at once: %v", log[max(i, 0):])
					}
					if len(probeSessions) != 1 || probeSessions[0] != shared {
						t.Errorf("the probe's sessions %x, want the shared one 0x%08x alone", probeSessions, uint32(shared))
					}
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
			})
		}
	}
}

// The forged RETRY on ReadPrepareGatedExtend (the daemon's record path,
// and every record's second try: agent.trailAnchor's ReadPrepare): its own
// keyed HMAC session, kept over the NV_Read, authorizes the gate's
// PolicySecret by the gate's value. A1 passes the PolicySecret on, forges
// TPM_RC_RETRY; the resend meets the moved nonces and the TPM refuses it,
// BAD_AUTH; the probe is refused too: forged (found by review: there was
// no probe on this path, exit 11).
func TestProbeReadPrepareForgedRetryIsForged(t *testing.T) {
	r := newSharedAuthEnv(t)
	was := r.anchor(t)
	n := 0
	r.bus.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCPolicySecret, tpm2.TPMRCRetry, &n))
	h := sha256.Sum256([]byte("head"))
	_, ge, err := r.tp.ReadPrepareGatedExtend(r.x, r.gate, h[:])
	r.bus.Set(nil)
	if ge != nil {
		err = errors.Join(err, ge.Close())
	}
	t.Logf("ReadPrepareGatedExtend, PolicySecret answered a forged RETRY (sent %d): %v", n, err)
	if n < 2 {
		t.Fatalf("sent %d times", n)
	}
	if err == nil {
		t.Fatal("prepared")
	}
	if errors.Is(err, tpm.ErrBadAuth) || !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("A1's forged RETRY: %v, want ErrResponseForged", err)
	}
	if now := r.anchor(t); !bytes.Equal(now, was) {
		t.Error("the anchor moved")
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

// A Share inside a Share is the outer one's: a wrong value refused in the
// inner one is ErrBadAuth (the probe in the outer Share's session, which
// is then given up), and the outer Share goes on: its next read starts
// another shared session, the quote with the right value works in it, and
// nothing is left.
func TestProbeNestedShare(t *testing.T) {
	r := newSharedAuthEnv(t)
	var mu sync.Mutex
	var log []tpm2.TPMCC
	r.bus.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		log = append(log, swtpmtest.CommandCode(cmd))
		mu.Unlock()
		return nil, nil, false
	})
	var inner, next error
	err := r.tp.Share(func() error {
		ak, err := r.tp.Load(r.srk, nil, r.akBlob)
		if err != nil {
			return err
		}
		defer r.tp.Flush(ak.Handle)
		nonce := sha256.Sum256([]byte("nonce"))
		wrong := bytes.Clone(r.akAuth)
		wrong[0] ^= 1
		inner = r.tp.Share(func() error {
			_, _, err := r.tp.Quote(ak, wrong, nonce[:], sharedAuthSel)
			return err
		})
		if _, err := r.tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{0}); err != nil {
			return err
		}
		_, _, next = r.tp.Quote(ak, r.akAuth, nonce[:], sharedAuthSel)
		return nil
	})
	r.bus.Set(nil)
	t.Logf("inner: %v; next: %v; %v", inner, next, log)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(inner, tpm.ErrBadAuth) || errors.Is(inner, tpm.ErrResponseForged) {
		t.Errorf("a wrong value in a nested Share: %v, want ErrBadAuth", inner)
	}
	if next != nil {
		t.Errorf("the next quote in the outer Share: %v", next)
	}
	if swtpmtest.Count(log, tpm2.TPMCCReadPublic) != 1 {
		t.Errorf("%d probes, want 1", swtpmtest.Count(log, tpm2.TPMCCReadPublic))
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}
