package swtpmtest

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Hook sees a command on its way to the TPM (next); handled true means it
// answered the command itself (forged, dropped, or sent on and changed).
type Hook func(next transport.TPM, cmd []byte) (rsp []byte, err error, handled bool)

// Bus is an interposer between provd and the TPM, for tests that play the
// bus attacker (A1): its hook, when set, sees every command.
type Bus struct {
	// Next is the TPM's side of the channel.
	Next transport.TPM
	mu   sync.Mutex
	hook Hook
}

// WithBus puts b between provd and the TPM (WithWrap).
func WithBus(b *Bus) Option {
	return WithWrap(func(next transport.TPM) transport.TPM { b.Next = next; return b })
}

// Send passes cmd to the hook, then to the TPM unless the hook handled it.
func (b *Bus) Send(cmd []byte) ([]byte, error) {
	b.mu.Lock()
	h := b.hook
	b.mu.Unlock()
	if h != nil {
		if rsp, err, ok := h(b.Next, cmd); ok {
			return rsp, err
		}
	}
	return b.Next.Send(cmd)
}

// Set replaces the hook (nil: every command passes).
func (b *Bus) Set(h Hook) {
	b.mu.Lock()
	b.hook = h
	b.mu.Unlock()
}

// CommandCode is the command code of cmd, a TPM command of at least its
// 10-byte header.
func CommandCode(cmd []byte) tpm2.TPMCC { return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) }

// SessionType is the sessionType of cmd, a TPM2_StartAuthSession command.
func SessionType(cmd []byte) (tpm2.TPMSE, bool) {
	off := 10 + 8 // header, tpmKey, bind
	for range 2 { // nonceCaller, encryptedSalt
		if len(cmd) < off+2 {
			return 0, false
		}
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
	}
	if len(cmd) <= off {
		return 0, false
	}
	return tpm2.TPMSE(cmd[off]), true
}

// PolicySessionThief is A1 answering the next policy StartAuthSession it
// sees with a session it started itself (unsalted: it needs no key to use
// it; the answer has no HMAC), once After says the command before it was
// seen (nil: at once). Stolen is that session's handle.
type PolicySessionThief struct {
	After  func(cmd []byte) bool
	mu     sync.Mutex
	ready  bool
	stolen tpm2.TPMHandle
}

// Stolen is the handle of the session handed to provd, 0 before.
func (s *PolicySessionThief) Stolen() tpm2.TPMHandle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stolen
}

// Hook is s as a Bus hook; it steals one session.
func (s *PolicySessionThief) Hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stolen != 0 {
		return nil, nil, false
	}
	if s.After != nil && !s.ready {
		s.ready = s.After(cmd)
		return nil, nil, false
	}
	if CommandCode(cmd) != tpm2.TPMCCStartAuthSession {
		return nil, nil, false
	}
	if st, ok := SessionType(cmd); !ok || st != tpm2.TPMSEPolicy {
		return nil, nil, false
	}
	rsp, err := StartOwnPolicySession(next)
	if err != nil {
		return nil, err, true
	}
	s.stolen = rsp.SessionHandle
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTNoSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(rsp.SessionHandle))
	b = binary.BigEndian.AppendUint16(b, uint16(len(rsp.NonceTPM.Buffer)))
	b = append(b, rsp.NonceTPM.Buffer...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return b, nil, true
}

// StartOwnPolicySession starts an unsalted, unbound policy session, as A1
// would for itself.
func StartOwnPolicySession(t transport.TPM) (*tpm2.StartAuthSessionResponse, error) {
	return StartOwnSession(t, tpm2.TPMSEPolicy)
}

// StartOwnSession starts an unsalted, unbound session of type se with no
// cipher, as A1 or another client (A2) would for itself.
func StartOwnSession(t transport.TPM, se tpm2.TPMSE) (*tpm2.StartAuthSessionResponse, error) {
	nc := make([]byte, 16)
	if _, err := rand.Read(nc); err != nil {
		return nil, err
	}
	return (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
		SessionType: se, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(t)
}

// OwnSessionExtend sends TPM2_NV_Extend of h with data, authorized by the
// unsalted policy session ps with an empty HMAC and continueSession clear,
// as A1 sends it; it returns the TPM's response code.
func OwnSessionExtend(next transport.TPM, h, ps tpm2.TPMHandle, data []byte) (tpm2.TPMRC, error) {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 4+2+1+2)
	b = binary.BigEndian.AppendUint32(b, uint32(ps))
	b = append(b, 0, 0, 0, 0, 0) // nonceCaller empty, attributes 0, empty HMAC
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := next.Send(b)
	if err != nil {
		return 0, err
	}
	if len(rsp) < 10 {
		return 0, errors.New("short answer")
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])), nil
}

// CommandLog records the command codes that cross a Bus while it is on
// (Start, Stop); set its Hook on the bus.
type CommandLog struct {
	mu  sync.Mutex
	on  bool
	got []tpm2.TPMCC
}

// Start clears the log and turns it on.
func (l *CommandLog) Start() { l.mu.Lock(); l.on, l.got = true, nil; l.mu.Unlock() }

// Stop turns the log off and returns what it recorded.
func (l *CommandLog) Stop() []tpm2.TPMCC {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.on = false
	return l.got
}

// Hook records cmd's code and passes it on.
func (l *CommandLog) Hook(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
	l.mu.Lock()
	if l.on {
		l.got = append(l.got, CommandCode(cmd))
	}
	l.mu.Unlock()
	return nil, nil, false
}

// Commands runs fn with a CommandLog set on b and returns the command
// codes fn sent through it, and fn's error; b's hook is cleared after.
func (b *Bus) Commands(fn func() error) ([]tpm2.TPMCC, error) {
	log := &CommandLog{}
	b.Set(log.Hook)
	defer b.Set(nil)
	log.Start()
	err := fn()
	return log.Stop(), err
}

// BeforeOnce is a hook that runs fn once, before the first command match
// picks goes on to the TPM (fn gets the TPM behind the bus, to act as
// another program would), and sets *done; every command passes on.
func BeforeOnce(match func(cmd []byte) bool, done *bool, fn func(next transport.TPM)) Hook {
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if *done || !match(cmd) {
			return nil, nil, false
		}
		*done = true
		fn(next)
		return nil, nil, false
	}
}

// Code is a match for BeforeOnce: the commands of code cc.
func Code(cc tpm2.TPMCC) func(cmd []byte) bool {
	return func(cmd []byte) bool { return CommandCode(cmd) == cc }
}

// Tamper is A1 changing every command match picks on its way to the TPM,
// or its answer on the way back: tamper is called with the command and a
// nil answer first, and a command it returns goes in its place; otherwise
// with the TPM's answer, and the answer it returns comes back instead.
// ran, when not nil, is set once a command was picked.
func Tamper(match func(cmd []byte) bool, tamper func(cmd, rsp []byte) (newCmd, newRsp []byte), ran *bool) Hook {
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !match(cmd) {
			return nil, nil, false
		}
		if ran != nil {
			*ran = true
		}
		if c, _ := tamper(cmd, nil); c != nil {
			rsp, err := next.Send(c)
			return rsp, err, true
		}
		rsp, err := next.Send(cmd)
		if err != nil {
			return rsp, err, true
		}
		_, r := tamper(cmd, rsp)
		return r, nil, true
	}
}

// RanThenAnswered is A1 passing the first command cc on (the TPM runs it)
// and answering rc in place of the TPM's answer; the copies sent after it
// (the channel resends on a warning) pass through. sent counts every copy.
func RanThenAnswered(cc tpm2.TPMCC, rc tpm2.TPMRC, sent *int) Hook {
	done := false
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if CommandCode(cmd) != cc {
			return nil, nil, false
		}
		*sent++
		if done {
			return nil, nil, false
		}
		done = true
		if _, err := next.Send(cmd); err != nil {
			return nil, err, true
		}
		return ErrorAnswer(rc), nil, true
	}
}

// AnsweredOnce is an honest warning: the first command cc is answered rc
// in the TPM's place without reaching it (a TPM that answers RETRY has not
// started the command); the copies sent after it pass through. sent counts
// every copy.
func AnsweredOnce(cc tpm2.TPMCC, rc tpm2.TPMRC, sent *int) Hook {
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if CommandCode(cmd) != cc {
			return nil, nil, false
		}
		if *sent++; *sent > 1 {
			return nil, nil, false
		}
		return ErrorAnswer(rc), nil, true
	}
}

// DropFirstSessionFlush arms b: the first TPM2_FlushContext of a session
// is not passed on and is answered success (A1 drops it; a flush's answer
// has no HMAC), the session staying loaded in the TPM. It reports the
// handle it kept (0 until then); the caller flushes it past the hook.
func DropFirstSessionFlush(b *Bus) *tpm2.TPMHandle {
	kept := new(tpm2.TPMHandle)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if *kept != 0 || CommandCode(cmd) != tpm2.TPMCCFlushContext || len(cmd) < 14 {
			return nil, nil, false
		}
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
		if h>>24 != 0x02 && h>>24 != 0x03 {
			return nil, nil, false
		}
		*kept = h
		return ErrorAnswer(tpm2.TPMRCSuccess), nil, true
	})
	return kept
}

// Decoy is an object of A1's own, created straight on the TPM (tp: the
// bus's side, Bus.Next) for A1 to rename a load's answer to: an ECC P-256
// signing primary in the NULL hierarchy, userWithAuth with an authValue of
// A1's choosing, noDA. The caller flushes it.
func Decoy(t testing.TB, tp transport.TPM) tpm2.TPMHandle {
	t.Helper()
	tmpl := tpm2.ECCSRKTemplate
	tmpl.ObjectAttributes = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, NoDA: true, SignEncrypt: true}
	tmpl.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
		CurveID: tpm2.TPMECCNistP256,
	})
	rsp, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHNull,
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: []byte("A1")}}},
		InPublic:      tpm2.New2B(tmpl),
	}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return rsp.ObjectHandle
}

// RenamedLoad is A1 renaming a load's answer (a TPM2_Load's handle has no
// HMAC): the first TPM2_Load that match accepts (nil: any) is passed on,
// the handle the TPM made is recorded in *made, and the answer names
// decoy in its place. Later commands pass through. The caller serializes
// the hook's calls with its reads of *made.
func RenamedLoad(match func(cmd []byte) bool, decoy tpm2.TPMHandle, made *tpm2.TPMHandle) Hook {
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if CommandCode(cmd) != tpm2.TPMCCLoad || *made != 0 || (match != nil && !match(cmd)) {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		if err != nil || len(rsp) < 14 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return rsp, err, true
		}
		*made = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
		r := append([]byte(nil), rsp...)
		binary.BigEndian.PutUint32(r[10:14], uint32(decoy))
		return r, nil, true
	}
}

// Answered passes cmd on and records its code unless the TPM answered it
// with a warning that has it sent again (RETRY, YIELDED, TESTING,
// NV_RATE: swtpm answers TPM2_Sign TPM_RC_RETRY at times): the commands as
// the TPM took them, each once.
func (l *CommandLog) Answered(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	rsp, err := next.Send(cmd)
	if err == nil && len(rsp) >= 10 {
		switch tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) {
		case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting, tpm2.TPMRCNVRate:
			return rsp, err, true
		}
	}
	l.Hook(next, cmd)
	return rsp, err, true
}

// Count is how many of cmds are cc.
func Count(cmds []tpm2.TPMCC, cc tpm2.TPMCC) int {
	n := 0
	for _, c := range cmds {
		if c == cc {
			n++
		}
	}
	return n
}

// ForgedGeneration is A1 moving provd's generation of the TPM with no TPM
// event, once: the first command cc answered TPM_RC_INITIALIZE (not sent
// on), provd's TPM2_Startup(CLEAR) answered success (not sent on: the TPM
// was never reset), the resend passed to the TPM; with dropResend, the
// resend is not sent on either and is answered with an error of no
// meaning.
func ForgedGeneration(cc tpm2.TPMCC, dropResend bool) Hook {
	stage := 0
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch c := CommandCode(cmd); {
		case stage == 0 && c == cc:
			stage = 1
			return ErrorAnswer(tpm2.TPMRCInitialize), nil, true
		case stage == 1 && c == tpm2.TPMCCStartup:
			stage = 2
			return ErrorAnswer(tpm2.TPMRCSuccess), nil, true
		case stage == 2 && c == cc && dropResend:
			stage = 3
			return ErrorAnswer(tpm2.TPMRCRetry + 0x100), nil, true
		}
		return nil, nil, false
	}
}

// ErrorAnswer is a TPM answer of rc alone (a 10-byte header), as A1 forges
// one.
func ErrorAnswer(rc tpm2.TPMRC) []byte {
	rsp := make([]byte, 10)
	binary.BigEndian.PutUint16(rsp[0:2], uint16(tpm2.TPMSTNoSessions))
	binary.BigEndian.PutUint32(rsp[2:6], 10)
	binary.BigEndian.PutUint32(rsp[6:10], uint32(rc))
	return rsp
}

// ParamsOffset is the offset, in cmd (a command with nh handles and
// sessions), of its parameter area, which follows the authorization area.
func ParamsOffset(cmd []byte, nh int) int {
	off := 10 + 4*nh
	return off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
}

// SessionAttrOffset is the offset, in cmd (a command with nh handles and
// sessions), of session i's attributes byte (i from 0), as A1 finds it to
// flip a bit.
func SessionAttrOffset(cmd []byte, nh, i int) int {
	off := 10 + 4*nh + 4 // header, handles, authorization size
	for n := 0; ; n++ {
		off += 4                                           // session handle
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:])) // nonce
		if n == i {
			return off
		}
		off++                                              // attributes
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:])) // hmac
	}
}

// LastSession is the handle of the last session in the authorization area
// of cmd, a command with nh handles; 0 when it has no sessions.
func LastSession(cmd []byte, nh int) tpm2.TPMHandle {
	s := Sessions(cmd, nh)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}

// Sessions are the handles of the sessions in the authorization area of
// cmd, a command with nh handles, in order; none when it has no sessions.
func Sessions(cmd []byte, nh int) []tpm2.TPMHandle {
	if tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTSessions {
		return nil
	}
	off := 10 + 4*nh
	size := int(binary.BigEndian.Uint32(cmd[off : off+4]))
	area := cmd[off+4 : off+4+size]
	var hs []tpm2.TPMHandle
	for len(area) >= 4 {
		hs = append(hs, tpm2.TPMHandle(binary.BigEndian.Uint32(area)))
		nonce := int(binary.BigEndian.Uint16(area[4:6]))
		rest := area[6+nonce+1:]
		hmac := int(binary.BigEndian.Uint16(rest))
		area = rest[2+hmac:]
	}
	return hs
}

// LockoutCounter is the TPM's TPM_PT_LOCKOUT_COUNTER (its dictionary-attack
// failure count), asked on tp: the TPM's side of a Bus (Bus.Next), so
// that no hook answers it.
func LockoutCounter(t testing.TB, tp transport.TPM) uint32 {
	t.Helper()
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTLockoutCounter), PropertyCount: 1}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	p, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(p.TPMProperty) == 0 || p.TPMProperty[0].Property != tpm2.TPMPTLockoutCounter {
		t.Fatalf("lockout counter: %v", err)
	}
	return p.TPMProperty[0].Value
}

// SwapSession is A1 flushing session h on the TPM's side of the bus (next)
// and starting an unsalted HMAC session of its own with no cipher in its
// place: swtpm hands out the lowest free number, h's.
func SwapSession(t testing.TB, next transport.TPM, h tpm2.TPMHandle) {
	t.Helper()
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(next); err != nil {
		t.Fatalf("A1's flush of 0x%x: %v", h, err)
	}
	rsp, err := StartOwnSession(next, tpm2.TPMSEHMAC)
	if err != nil {
		t.Fatalf("A1's own session: %v", err)
	}
	if rsp.SessionHandle != h {
		t.Fatalf("A1's session is 0x%x, want 0x%x: the swap did not land", rsp.SessionHandle, h)
	}
}

// RefuseAfter is a hook that, once a command first has passed, answers
// every command cc with rc in the TPM's place (it never reaches the TPM):
// an operation that fails at cc after first, as a fault or A1 would make
// it (e.g. a move to a new anchor that fails after its NV_DefineSpace).
// first 0: from the start (Refuse).
func RefuseAfter(first, cc tpm2.TPMCC, rc tpm2.TPMRC) Hook {
	var mu sync.Mutex
	seen := first == 0
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch CommandCode(cmd) {
		case first:
			seen = true
		case cc:
			if seen {
				return ErrorAnswer(rc), nil, true
			}
		}
		return nil, nil, false
	}
}

// Refuse is a hook that answers every command cc with rc in the TPM's
// place (it never reaches the TPM).
func Refuse(cc tpm2.TPMCC, rc tpm2.TPMRC) Hook { return RefuseAfter(0, cc, rc) }
