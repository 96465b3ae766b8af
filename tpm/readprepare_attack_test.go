package tpm_test

// Attacks on tpm.ReadPrepareGatedExtend now that its
// session is provd's keyed HMAC session (unbound, salted to the pinned
// SRK), and on the probe of a refused authorization (authorizeChecked).
// A1 is the bus. Each test says what it tries and what must hold.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// readPrepare is ReadPrepareGatedExtend of the env's gated index with
// head, then the extend and the close: the value read and what failed.
func (r *sharedAuthEnv) readPrepare(head []byte) ([]byte, error) {
	v, ge, err := r.tp.ReadPrepareGatedExtend(r.x, r.gate, head)
	if err != nil {
		return v, err
	}
	return v, errors.Join(ge.Extend(), ge.Close())
}

// isNVReadOf: cmd is a TPM2_NV_Read with a session (the record session's
// read).
func isSessionNVRead(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead &&
		tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions
}

// newReloadableGateEnv is newSharedAuthEnv's pinned SRK and written gated
// index without the AK, with the gate's blob and value kept, so that a
// test can load the gate again after a reset.
func newReloadableGateEnv(t *testing.T) (*sharedAuthEnv, tpm.Blob, []byte) {
	t.Helper()
	r := &sharedAuthEnv{bus: &swtpmtest.Bus{}}
	r.env = swtpmtest.Start(t, swtpmtest.WithBus(r.bus))
	r.tp = r.env.TPM
	first := sha256.Sum256([]byte("head"))
	var blob tpm.Blob
	var auth []byte
	r.gate, r.x, blob, auth = gatedIndex(t, r.tp, testGatedHandle, first[:])
	t.Cleanup(func() { _ = r.tp.Flush(r.gate.Handle) }) // the gate loaded last
	var err error
	if r.srk, err = r.tp.SRK(); err != nil {
		t.Fatal(err)
	}
	return r, blob, auth
}

// An honest event (a TPM reset, a power cut, a migration) right before
// each command ReadPrepareGatedExtend sends after its NV_Read: the policy
// session's start (after a reset it takes the slot the record session
// had), the PolicySecret, the PolicyCommandCode, the record session's
// flush; and before the extend. Never forged, never a wrong value; the
// anchor moves at most once, by provd's head; whatever is left is swept
// as asked; the next record works (the flushes after the event are
// logged: the record session's number, free after a reset, is flushed
// only after the sessions that took it since are gone). A migration keeps every session: the
// record goes through.
func TestReadPrepareEventsBetweenReadAndProof(t *testing.T) {
	type point struct {
		name string
		at   func(cmd []byte) bool
	}
	points := []point{
		{"policy start", isPolicyStart},
		{"PolicySecret", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret }},
		{"PolicyCommandCode", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicyCommandCode }},
		{"record session's flush", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCFlushContext }},
		{"extend", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend }},
	}
	for _, ev := range swtpmtest.Events {
		for _, p := range points {
			t.Run(ev+"/before "+p.name, func(t *testing.T) {
				r, gateBlob, gateAuth := newReloadableGateEnv(t)
				was := r.anchor(t)
				var mu sync.Mutex
				var k tpm2.TPMHandle
				var made, flushed []tpm2.TPMHandle
				fired := false
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					cc := swtpmtest.CommandCode(cmd)
					if isSessionNVRead(cmd) && k == 0 {
						k = swtpmtest.LastSession(cmd, 2)
					}
					if fired && cc == tpm2.TPMCCFlushContext {
						flushed = append(flushed, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
					}
					if k == 0 || fired || !p.at(cmd) {
						if fired && cc == tpm2.TPMCCStartAuthSession {
							rsp, err := next.Send(cmd)
							if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
								made = append(made, tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14])))
							}
							return rsp, err, true
						}
						return nil, nil, false
					}
					fired = true
					r.env.Event(ev)
					if cc == tpm2.TPMCCFlushContext {
						flushed = append(flushed, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
					}
					rsp, err := next.Send(cmd)
					if err == nil && cc == tpm2.TPMCCStartAuthSession && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
						made = append(made, tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14])))
					}
					return rsp, err, true
				})
				head := sha256.Sum256([]byte("provd's head"))
				_, err := r.readPrepare(head[:])
				r.bus.Set(nil)
				t.Logf("%v; record session 0x%08x; started after the event %x; flushed after it %x", err, uint32(k), made, flushed)
				if !fired {
					t.Fatal("not mounted")
				}
				if errors.Is(err, tpm.ErrResponseForged) {
					t.Errorf("an honest %s called forged: %v", ev, err)
				}
				if errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("an honest %s called a wrong gate value: %v", ev, err)
				}
				now := r.anchor(t)
				switch {
				case bytes.Equal(now, was):
					if ev == "migrate" {
						t.Errorf("a migration kept the record from its extend: %v", err)
					}
				case bytes.Equal(now, chained(was, head[:])):
					if err != nil {
						t.Logf("extended, and reported %v (the caller reads the anchor back)", err)
					}
				default:
					t.Errorf("the anchor is %x: neither as it was nor provd's head on it", now)
				}
				// The gate itself is gone after a reset or power cut:
				// the next record loads it again (as agent.withGate does).
				held := []tpm2.TPMHandle{r.gate.Handle}
				if ev != "migrate" {
					g, gerr := r.tp.LoadGate(r.srk, gateBlob, gateAuth)
					if gerr != nil {
						t.Fatal(gerr)
					}
					r.gate = g
					held = []tpm2.TPMHandle{g.Handle}
				}
				sweptAsAsked(t, r.tp, held...)
				now = r.anchor(t)
				next := sha256.Sum256([]byte("next"))
				if _, err := r.readPrepare(next[:]); err != nil {
					t.Fatalf("the next record: %v", err)
				}
				if got := r.anchor(t); !bytes.Equal(got, chained(now, next[:])) {
					t.Errorf("after the next record %x, want %x", got, chained(now, next[:]))
				}
				sweptAsAsked(t, r.tp, held...)
			})
		}
	}
}

// A1 replays an earlier answer of the record session: the NV_Read's
// (the anchor's value before provd's last extend: provd would then
// compare its chain with a stale value) or the PolicySecret's, from the
// previous record, with the command passed on to the TPM or dropped.
// Each answer's HMAC covers the TPM's new nonce and provd's: forged,
// nothing extended, nothing left, the next record works, the lockout
// counter unmoved.
func TestReadPrepareAnswersReplayed(t *testing.T) {
	r := newSharedAuthEnv(t)
	lock := swtpmtest.LockoutCounter(t, r.bus.Next)
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCNVRead, tpm2.TPMCCPolicySecret} {
		name := map[tpm2.TPMCC]string{tpm2.TPMCCNVRead: "NV_Read", tpm2.TPMCCPolicySecret: "PolicySecret"}[cc]
		for _, forward := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/passed on=%v", name, forward), func(t *testing.T) {
				// An honest record, its answer kept.
				var mu sync.Mutex
				var kept []byte
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) != cc {
						return nil, nil, false
					}
					rsp, err := next.Send(cmd)
					mu.Lock()
					kept = slices.Clone(rsp)
					mu.Unlock()
					return rsp, err, true
				})
				first := sha256.Sum256([]byte("first"))
				if _, err := r.readPrepare(first[:]); err != nil {
					t.Fatal(err)
				}
				was := r.anchor(t)
				replayed := false
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) != cc || replayed {
						return nil, nil, false
					}
					replayed = true
					if forward {
						if _, err := next.Send(cmd); err != nil {
							return nil, err, true
						}
					}
					return slices.Clone(kept), nil, true
				})
				head := sha256.Sum256([]byte("provd's head"))
				v, err := r.readPrepare(head[:])
				r.bus.Set(nil)
				t.Logf("%v", err)
				if !replayed {
					t.Fatal("not mounted")
				}
				if err == nil {
					t.Fatalf("a replayed answer taken (read %x)", v)
				}
				if !errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("a replayed %s answer: %v, want forged", name, err)
				}
				if now := r.anchor(t); !bytes.Equal(now, was) {
					t.Errorf("the anchor moved: %x, was %x", now, was)
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
				next := sha256.Sum256([]byte("next"))
				if _, err := r.readPrepare(next[:]); err != nil {
					t.Fatalf("the next record: %v", err)
				}
			})
		}
	}
	if now := swtpmtest.LockoutCounter(t, r.bus.Next); now != lock {
		t.Errorf("lockout counter %d, was %d", now, lock)
	}
}

// A1 changes the record session's NV_Read command: the authorization
// moved to the owner (the index is OWNERREAD, and the owner's password is
// empty, so the HMAC key is the same as the index's), another offset or
// size, the read pointed at another index A1 defined with the same shape
// and a value of its choosing. The unbound session's command HMAC covers
// both handles' names and the parameters, as the bound one's did: the TPM
// refuses each (forged), provd reads nothing, and since the refusal is
// the NV_Read's (a *tpm.Error of TPM2_NV_Read), the agent reads apart;
// nothing counts against the lockout (the index is NO_DA, the owner
// exempt), nothing is left.
func TestReadPrepareReadCommandChanged(t *testing.T) {
	r := newSharedAuthEnv(t)
	// A1's own index, same shape (an extend index, AUTHREAD, empty
	// password), written with its own value: it only needs the owner's
	// empty password and a policy of its own.
	other := testGatedHandle + 1
	pub := tpm2.TPMSNVPublic{NVIndex: other, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTExtend, AuthWrite: true, AuthRead: true, OwnerRead: true, NoDA: true}, DataSize: 32}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(r.bus.Next); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, r.tp, other)
	a1Val := sha256.Sum256([]byte("A1's value"))
	if err := r.tp.NVExtend(other, a1Val[:]); err != nil {
		t.Fatal(err)
	}
	lock := swtpmtest.LockoutCounter(t, r.bus.Next)
	for _, c := range []struct {
		name   string
		change func(cmd []byte)
	}{
		{"authorized by the owner", func(cmd []byte) { binary.BigEndian.PutUint32(cmd[10:14], uint32(tpm2.TPMRHOwner)) }},
		{"another offset", func(cmd []byte) {
			p := swtpmtest.ParamsOffset(cmd, 2)
			binary.BigEndian.PutUint16(cmd[p:], 16)
			binary.BigEndian.PutUint16(cmd[p+2:], 16)
		}},
		{"another index", func(cmd []byte) {
			binary.BigEndian.PutUint32(cmd[10:14], uint32(other))
			binary.BigEndian.PutUint32(cmd[14:18], uint32(other))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			was := r.anchor(t)
			ran := false
			r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if !isSessionNVRead(cmd) || ran {
					return nil, nil, false
				}
				ran = true
				cmd = slices.Clone(cmd)
				c.change(cmd)
				rsp, err := next.Send(cmd)
				if err == nil {
					t.Logf("the TPM answered 0x%x", binary.BigEndian.Uint32(rsp[6:10]))
				}
				return rsp, err, true
			})
			head := sha256.Sum256([]byte("provd's head"))
			v, err := r.readPrepare(head[:])
			r.bus.Set(nil)
			t.Logf("%v", err)
			if !ran {
				t.Fatal("not mounted")
			}
			if err == nil {
				t.Fatalf("read %x through a changed command", v)
			}
			if bytes.Equal(v, a1Val[:]) || bytes.Equal(v, chained(make([]byte, 32), a1Val[:])) {
				t.Error("A1's value returned")
			}
			var te *tpm.Error
			if !errors.As(err, &te) || te.Command != "TPM2_NV_Read" {
				t.Errorf("not the NV_Read's refusal (the agent would not read apart): %v", err)
			}
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("a changed NV_Read: %v, want forged", err)
			}
			if now := r.anchor(t); !bytes.Equal(now, was) {
				t.Errorf("the anchor moved: %x, was %x", now, was)
			}
			sweptAsAsked(t, r.tp, r.gate.Handle)
		})
	}
	if now := swtpmtest.LockoutCounter(t, r.bus.Next); now != lock {
		t.Errorf("lockout counter %d, was %d", now, lock)
	}
}

// A1 drops the record session's PolicySecret (the TPM never sees it) and
// answers TPM_RC_BAD_AUTH in the TPM's place. The session's nonces did
// not move, so the probe verifies: provd reports a wrong gate value
// (ErrBadAuth, exit 11) although the value is right. An error answer has
// no HMAC, and a command the TPM refused leaves no trace (the gate is
// noDA): nothing on the TPM's side tells this apart from a real wrong
// value. What must hold: nothing extended, nothing left, the next record
// works. The classification is logged: see the report (the threat model's
// "only if that verifies was the value wrong" holds only for a command
// the TPM ran).
func TestReadPrepareBadAuthInTheTPMsPlace(t *testing.T) {
	r := newSharedAuthEnv(t)
	was := r.anchor(t)
	n, probes := 0, 0
	r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if isProbe(cmd) {
			probes++
		}
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret || n > 0 {
			return nil, nil, false
		}
		n++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCBadAuth + tpm2.TPMRC(0x900)), nil, true // session 1
	})
	head := sha256.Sum256([]byte("provd's head"))
	_, err := r.readPrepare(head[:])
	r.bus.Set(nil)
	t.Logf("PolicySecret dropped, BAD_AUTH forged (probes %d): %v; badauth=%v forged=%v", probes, err, errors.Is(err, tpm.ErrBadAuth), errors.Is(err, tpm.ErrResponseForged))
	if n == 0 || probes == 0 {
		t.Fatalf("not mounted (%d, %d probes)", n, probes)
	}
	if err == nil {
		t.Fatal("prepared")
	}
	if now := r.anchor(t); !bytes.Equal(now, was) {
		t.Errorf("the anchor moved")
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
	next := sha256.Sum256([]byte("next"))
	if _, err := r.readPrepare(next[:]); err != nil {
		t.Fatalf("the next record: %v", err)
	}
}

// The entity of the probe gone: A1 flushes the gate (FlushContext needs no
// authorization) right before the record's PolicySecret, which the TPM
// then refuses for its handle (no probe: not a refused authorization);
// and A1 flushes it and answers the PolicySecret BAD_AUTH itself, so that
// the probe names a handle with nothing at it. Neither is a wrong value,
// neither extends anything; nothing else is left.
func TestProbeEntityFlushed(t *testing.T) {
	for _, forgeBadAuth := range []bool{false, true} {
		t.Run(fmt.Sprintf("BAD_AUTH forged=%v", forgeBadAuth), func(t *testing.T) {
			r := newSharedAuthEnv(t)
			was := r.anchor(t)
			n, probes := 0, 0
			var probeRC uint32
			r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if isProbe(cmd) {
					probes++
					rsp, err := next.Send(cmd)
					if err == nil {
						probeRC = binary.BigEndian.Uint32(rsp[6:10])
					}
					return rsp, err, true
				}
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret || n > 0 {
					return nil, nil, false
				}
				n++
				if _, err := (tpm2.FlushContext{FlushHandle: r.gate.Handle}).Execute(next); err != nil {
					t.Errorf("A1's flush: %v", err)
				}
				if forgeBadAuth {
					return swtpmtest.ErrorAnswer(tpm2.TPMRCBadAuth + tpm2.TPMRC(0x900)), nil, true
				}
				return nil, nil, false
			})
			head := sha256.Sum256([]byte("provd's head"))
			_, err := r.readPrepare(head[:])
			r.bus.Set(nil)
			t.Logf("%v (probes %d, the probe's answer 0x%x)", err, probes, probeRC)
			if n == 0 {
				t.Fatal("not mounted")
			}
			if forgeBadAuth && probes == 0 {
				t.Error("no probe after a BAD_AUTH")
			}
			if !forgeBadAuth && probes > 0 {
				t.Error("a probe after a refusal that was not of the authorization")
			}
			if err == nil {
				t.Fatal("prepared with the gate flushed")
			}
			if errors.Is(err, tpm.ErrBadAuth) {
				t.Errorf("the gate flushed by A1 reported as a wrong gate value: %v", err)
			}
			if now := r.anchor(t); !bytes.Equal(now, was) {
				t.Errorf("the anchor moved")
			}
			sweptAsAsked(t, r.tp)
		})
	}
}

// The probe on a persistent entity: an AK made persistent (a handle that no
// flush takes) and quoted in the shared session. Right value: quotes; a
// wrong value: ErrBadAuth (the probe, a ReadPublic of the persistent
// handle, verifies); A1's forged RETRY after the TPM ran the quote:
// forged. Nothing left, the persistent handle where it was.
func TestProbePersistentEntity(t *testing.T) {
	r := newSharedAuthEnv(t)
	const persistent = tpm2.TPMHandle(0x81000F00)
	ak, err := r.tp.Load(r.srk, nil, r.akBlob)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: ak.Handle, Name: ak.Name}, PersistentHandle: persistent}).Execute(r.bus.Next); err != nil {
		t.Fatal(err)
	}
	_ = r.tp.Flush(ak.Handle)
	pak := tpm.Object{Handle: persistent, Name: ak.Name, Public: ak.Public}
	t.Cleanup(func() {
		_, _ = (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: persistent, Name: ak.Name}, PersistentHandle: persistent}).Execute(r.bus.Next)
	})
	quote := func(v []byte) error {
		return r.tp.Share(func() error {
			if err := r.read(); err != nil {
				return err
			}
			nonce := sha256.Sum256([]byte("nonce"))
			_, _, err := r.tp.Quote(pak, v, nonce[:], sharedAuthSel)
			return err
		})
	}
	if err := quote(r.akAuth); err != nil {
		t.Fatalf("quote with the persistent AK: %v", err)
	}
	wrong := bytes.Clone(r.akAuth)
	wrong[0] ^= 1
	if err := quote(wrong); !errors.Is(err, tpm.ErrBadAuth) || errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("a wrong value on a persistent AK: %v, want ErrBadAuth", err)
	}
	n := 0
	r.bus.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCQuote, tpm2.TPMRCRetry, &n))
	err = quote(r.akAuth)
	r.bus.Set(nil)
	t.Logf("forged RETRY on the persistent AK's quote (sent %d): %v", n, err)
	if errors.Is(err, tpm.ErrBadAuth) || !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("A1's forged RETRY on a persistent AK: %v, want forged", err)
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
	if _, err := r.tp.ReadPublic(persistent); err != nil {
		t.Errorf("the persistent AK: %v", err)
	}
}

// A1 answers a command of the record session with success and a broken
// sessions area: the area cut off (its tag left as is, or set to
// NO_SESSIONS), an HMAC of no bytes, a nonce of no bytes, on the NV_Read,
// the PolicySecret and (after a wrong value refused) the probe. Forged,
// never a panic, never a wrong value, nothing extended, nothing left.
func TestRecordSessionAreaBroken(t *testing.T) {
	// rspSessions is the offset of the sessions area of rsp, a success
	// answer with nh handles and a parameterSize.
	rspSessions := func(rsp []byte, nh int) int {
		off := 10 + 4*nh
		return off + 4 + int(binary.BigEndian.Uint32(rsp[off:]))
	}
	changes := []struct {
		name   string
		change func(rsp []byte) []byte
	}{
		{"area cut off", func(rsp []byte) []byte { return withSize(slices.Clone(rsp[:rspSessions(rsp, 0)])) }},
		{"area cut off, tag NO_SESSIONS", func(rsp []byte) []byte {
			r := withSize(slices.Clone(rsp[:rspSessions(rsp, 0)]))
			binary.BigEndian.PutUint16(r, uint16(tpm2.TPMSTNoSessions))
			return r
		}},
		{"empty HMAC", func(rsp []byte) []byte {
			off := rspSessions(rsp, 0)
			n := int(binary.BigEndian.Uint16(rsp[off:]))
			r := slices.Clone(rsp[:off+2+n+1])
			return withSize(append(r, 0, 0))
		}},
		{"empty nonce", func(rsp []byte) []byte {
			off := rspSessions(rsp, 0)
			n := int(binary.BigEndian.Uint16(rsp[off:]))
			r := append(slices.Clone(rsp[:off]), 0, 0)
			return withSize(append(r, rsp[off+2+n:]...))
		}},
	}
	targets := []struct {
		name  string
		match func(cmd []byte) bool
		wrong bool
	}{
		{"NV_Read", isSessionNVRead, false},
		{"PolicySecret", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret }, false},
		{"probe", isProbe, true},
	}
	r, gateBlob, gateAuth := newReloadableGateEnv(t)
	_ = gateAuth
	for _, tg := range targets {
		for _, c := range changes {
			t.Run(tg.name+"/"+c.name, func(t *testing.T) {
				was := r.anchor(t)
				gate := r.gate
				if tg.wrong {
					bad := newGateAuth(t)
					g, err := r.tp.LoadGate(r.srk, gateBlob, bad)
					if err != nil {
						t.Fatal(err)
					}
					defer r.tp.Flush(g.Handle)
					gate = g
				}
				ran := false
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if ran || !tg.match(cmd) {
						return nil, nil, false
					}
					rsp, err := next.Send(cmd)
					if err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
						return rsp, err, true
					}
					ran = true
					return c.change(rsp), nil, true
				})
				head := sha256.Sum256([]byte("provd's head"))
				var err error
				func() {
					defer func() {
						if p := recover(); p != nil {
							err = fmt.Errorf("panic: %v", p)
							t.Errorf("panicked: %v", p)
						}
					}()
					var ge *tpm.GatedExtend
					_, ge, err = r.tp.ReadPrepareGatedExtend(r.x, gate, head[:])
					if ge != nil {
						err = errors.Join(err, ge.Close())
					}
				}()
				r.bus.Set(nil)
				t.Logf("%v", err)
				if !ran {
					t.Fatal("not mounted")
				}
				if err == nil {
					t.Fatal("taken")
				}
				if !errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("a broken sessions area: %v, want forged", err)
				}
				if now := r.anchor(t); !bytes.Equal(now, was) {
					t.Errorf("the anchor moved")
				}
				sweptAsAsked(t, r.tp, r.gate.Handle, gate.Handle)
			})
		}
	}
}

// A1 changes one byte of a command authorized in a keyed HMAC session (the
// last byte: PolicySecret's expiration, the quote's PCR selection) and
// passes it on; the TPM refuses its HMAC honestly (TPM_RC_BAD_AUTH: it
// cannot tell a changed command from a wrong value) and the session's
// nonces do not move, so the probe verifies: the outcome is ErrBadAuth
// (exit 11, "a wrong value") with the right value. Logged, with the
// properties that must hold: nothing done, nothing counted against the
// lockout, nothing left, the next one works.
func TestChangedAuthorizedCommand(t *testing.T) {
	r := newSharedAuthEnv(t)
	lock := swtpmtest.LockoutCounter(t, r.bus.Next)
	flipLast := func(cc tpm2.TPMCC, n *int) swtpmtest.Hook {
		return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) != cc || *n > 0 {
				return nil, nil, false
			}
			*n++
			c := slices.Clone(cmd)
			c[len(c)-1] ^= 1
			rsp, err := next.Send(c)
			if err == nil {
				t.Logf("the TPM answered the changed %#x: 0x%x", uint32(cc), binary.BigEndian.Uint32(rsp[6:10]))
			}
			return rsp, err, true
		}
	}
	for _, c := range []struct {
		name string
		cc   tpm2.TPMCC
		run  func() error
	}{
		{"record session's PolicySecret", tpm2.TPMCCPolicySecret, func() error {
			h := sha256.Sum256([]byte("provd's head"))
			_, err := r.readPrepare(h[:])
			return err
		}},
		{"shared session's PolicySecret", tpm2.TPMCCPolicySecret, func() error {
			h := sha256.Sum256([]byte("provd's head"))
			return r.prove(h[:], nil)
		}},
		{"shared session's quote", tpm2.TPMCCQuote, func() error { return r.quote(nil) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			was := r.anchor(t)
			n := 0
			r.bus.Set(flipLast(c.cc, &n))
			err := c.run()
			r.bus.Set(nil)
			t.Logf("%v; badauth=%v forged=%v", err, errors.Is(err, tpm.ErrBadAuth), errors.Is(err, tpm.ErrResponseForged))
			if n == 0 {
				t.Fatal("not mounted")
			}
			if err == nil {
				t.Fatal("a changed command succeeded")
			}
			// No authValue in what is reported.
			if msg := err.Error(); strings.Contains(msg, hex.EncodeToString(r.akAuth)) || strings.Contains(msg, string(r.akAuth)) {
				t.Errorf("the AK's value in the error: %v", err)
			}
			if now := r.anchor(t); !bytes.Equal(now, was) {
				t.Errorf("the anchor moved")
			}
			sweptAsAsked(t, r.tp, r.gate.Handle)
			if err := c.run(); err != nil {
				t.Errorf("the next one: %v", err)
			}
		})
	}
	if now := swtpmtest.LockoutCounter(t, r.bus.Next); now != lock {
		t.Errorf("lockout counter %d, was %d", now, lock)
	}
}

// A1 passes the record session's StartAuthSession on (the TPM starts it)
// and answers it with the number of another session (here one started
// beside provd, as the daemon's kept policy session or a shared session
// would be, in its HMAC form: the channel checks only the type). The
// answer has no HMAC. provd then reads in the session A1 named, which the
// TPM refuses (not provd's session), and flushes that number (the
// victim: the documented class of A1 naming a handle provd holds for
// another purpose). What must hold: nothing read or extended, not a wrong
// value; the session the TPM really started is nobody's, so the sweep
// must be asked for.
func TestRecordSessionStartRenamed(t *testing.T) {
	r := newSharedAuthEnv(t)
	was := r.anchor(t)
	nonce := make([]byte, 16)
	victim, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nonce},
		SessionType: tpm2.TPMSEHMAC, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(r.bus.Next)
	if err != nil {
		t.Fatal(err)
	}
	var real tpm2.TPMHandle
	r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if real != 0 || swtpmtest.CommandCode(cmd) != tpm2.TPMCCStartAuthSession {
			return nil, nil, false
		}
		if st, ok := swtpmtest.SessionType(cmd); !ok || st != tpm2.TPMSEHMAC {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		if err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return rsp, err, true
		}
		real = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
		return withHandle(rsp, uint32(victim.SessionHandle)), nil, true
	})
	head := sha256.Sum256([]byte("provd's head"))
	v, err := r.readPrepare(head[:])
	r.bus.Set(nil)
	t.Logf("record session started at 0x%08x, answered as 0x%08x: %v", uint32(real), uint32(victim.SessionHandle), err)
	if real == 0 {
		t.Fatal("not mounted")
	}
	if err == nil {
		t.Fatalf("read %x in a session A1 named", v)
	}
	if errors.Is(err, tpm.ErrBadAuth) && !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("reported as a wrong value: %v", err)
	}
	if now := r.anchor(t); !bytes.Equal(now, was) {
		t.Errorf("the anchor moved")
	}
	left, _ := r.tp.Leftovers()
	t.Logf("left: %x (the victim 0x%08x %s)", left, uint32(victim.SessionHandle),
		map[bool]string{true: "still there", false: "flushed by provd"}[slices.Contains(left, victim.SessionHandle)])
	_ = r.tp.Flush(victim.SessionHandle)
	sweptAsAsked(t, r.tp, r.gate.Handle, victim.SessionHandle)
}
