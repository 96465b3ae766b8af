package agent

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// attrFlipper is an interposer that sets userWithAuth in the inPublic of
// every TPM2_Create command while on is set. A policy session that is
// neither salted nor bound, used without PolicyAuthValue, has an HMAC key
// of zero bytes: the interposer recomputes its command HMAC over the changed
// parameters (it tracks each session's nonceTPM from the responses and
// reads the parent's name with its own ReadPublic). No response is changed.
type attrFlipper struct {
	next    transport.TPM
	on      *atomic.Bool
	flipped *atomic.Int32
	nonces  map[uint32][]byte // session handle -> last nonceTPM
}

func (f attrFlipper) Send(cmd []byte) ([]byte, error) {
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	if f.on.Load() && len(cmd) > 14 && (cc == tpm2.TPMCCCreate || cc == tpm2.TPMCCCreateLoaded) {
		c := append([]byte(nil), cmd...)
		off := 10 + 4 // header, parentHandle
		sessAt, sessEnd := 0, 0
		if tpm2.TPMST(binary.BigEndian.Uint16(c[0:2])) == tpm2.TPMSTSessions {
			sessAt = off + 4
			off += 4 + int(binary.BigEndian.Uint32(c[off:]))
			sessEnd = off
		}
		params := off
		off += 2 + int(binary.BigEndian.Uint16(c[off:])) // inSensitive
		attrs := off + 2 + 2 + 2                         // inPublic size, type, nameAlg
		c[attrs+3] |= 0x40                               // TPMA_OBJECT userWithAuth (bit 6)
		f.flipped.Add(1)
		if sessAt != 0 {
			type sess struct {
				h                  uint32
				nonce              []byte
				attrAt, hAt, hmacN int
			}
			var ss []sess
			for o := sessAt; o < sessEnd; {
				var x sess
				x.h = binary.BigEndian.Uint32(c[o:])
				o += 4
				n := int(binary.BigEndian.Uint16(c[o:]))
				x.nonce = c[o+2 : o+2+n]
				o += 2 + n
				x.attrAt = o
				o++
				x.hAt = o
				x.hmacN = int(binary.BigEndian.Uint16(c[o:]))
				o += 2 + x.hmacN
				ss = append(ss, x)
			}
			if x := ss[0]; x.h>>24 == 0x03 { // a policy session: recompute its HMAC with the empty key
				var dec, enc []byte
				for _, y := range ss[1:] {
					if c[y.attrAt]&0x40 != 0 {
						enc = f.nonces[y.h]
					} else if c[y.attrAt]&0x20 != 0 {
						dec = f.nonces[y.h]
					}
				}
				parent := binary.BigEndian.Uint32(c[10:14])
				rp, err := (tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(parent)}).Execute(f.next)
				if err != nil {
					return nil, err
				}
				ch := sha256.New()
				ch.Write(c[6:10])
				ch.Write(rp.Name.Buffer)
				ch.Write(c[params:])
				m := hmac.New(sha256.New, nil)
				m.Write(ch.Sum(nil))
				m.Write(x.nonce)
				m.Write(f.nonces[x.h])
				m.Write(dec)
				m.Write(enc)
				m.Write(c[x.attrAt : x.attrAt+1])
				copy(c[x.hAt+2:], m.Sum(nil))
			}
		}
		cmd = c
	}
	rsp, err := f.next.Send(cmd)
	if err == nil {
		f.track(cc, cmd, rsp)
	}
	return rsp, err
}

// track keeps each session's last nonceTPM: from StartAuthSession, and from
// the auth area of every successful response with sessions.
func (f attrFlipper) track(cc tpm2.TPMCC, cmd, rsp []byte) {
	if len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return
	}
	if cc == tpm2.TPMCCStartAuthSession {
		h := binary.BigEndian.Uint32(rsp[10:14])
		n := int(binary.BigEndian.Uint16(rsp[14:16]))
		f.nonces[h] = append([]byte(nil), rsp[16:16+n]...)
		return
	}
	if tpm2.TPMST(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTSessions {
		return
	}
	// Command sessions in order.
	defer func() { recover() }() // only policy sessions on Create/Load matter here
	nh, ok := map[tpm2.TPMCC]int{tpm2.TPMCCCreate: 1, tpm2.TPMCCLoad: 1, tpm2.TPMCCCreateLoaded: 1, tpm2.TPMCCUnseal: 1,
		tpm2.TPMCCSign: 1, tpm2.TPMCCHMAC: 1, tpm2.TPMCCCreatePrimary: 1, tpm2.TPMCCPCRRead: 0}[cc]
	if !ok {
		return
	}
	off := 10 + 4*nh
	end := off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
	off += 4
	var hs []uint32
	for off < end {
		hs = append(hs, binary.BigEndian.Uint32(cmd[off:]))
		off += 4
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
		off++
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
	}
	rh := map[tpm2.TPMCC]int{tpm2.TPMCCLoad: 1, tpm2.TPMCCCreateLoaded: 1, tpm2.TPMCCCreatePrimary: 1}[cc]
	roff := 10 + 4*rh
	roff += 4 + int(binary.BigEndian.Uint32(rsp[roff:]))
	for _, h := range hs {
		if roff+2 > len(rsp) {
			return
		}
		n := int(binary.BigEndian.Uint16(rsp[roff:]))
		f.nonces[h] = append([]byte(nil), rsp[roff+2:roff+2+n]...)
		roff += 2 + n + 1
		roff += 2 + int(binary.BigEndian.Uint16(rsp[roff:]))
	}
}

// An interposer sets userWithAuth in the template of every TPM2_Create and
// CreateLoaded, and recomputes the HMAC of the parent's authorization
// (a password, or a policy session that is neither salted nor bound: their
// keys are no secret). Were it to succeed, the PK, D and derived keys would
// be usable with an empty password after a bad boot. Every creation runs
// with a session salted to the pinned SRK, whose command HMAC it cannot
// recompute: the TPM refuses the changed command, and nothing is made.
func TestInterposerCannotChangeWhatTheTPMMakes(t *testing.T) {
	var on atomic.Bool
	var flipped atomic.Int32
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		return attrFlipper{next: next, on: &on, flipped: &flipped, nonces: map[uint32][]byte{}}
	}))
	ctx := context.Background()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	on.Store(true)
	_, err = a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCA: caBundle(t, env)})
	on.Store(false)
	if flipped.Load() == 0 || !errors.Is(err, tpm2.TPMRCBadAuth) || !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Fatalf("provision through an interposer that changed %d templates: %v (exit %d), want TPM_RC_BAD_AUTH in the guard session: forged (15)",
			flipped.Load(), err, api.ExitCode(err))
	}
	if st, err := a.Status(ctx); err != nil || st.Provisioned {
		t.Fatalf("after the refusal: provisioned %v (%v)", st.Provisioned, err)
	}

	// Provisioned honestly, the interposer waits for a key derivation.
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCA: caBundle(t, env)}); err != nil {
		t.Fatal(err)
	}
	flipped.Store(0)
	on.Store(true)
	_, err = officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "k1", Label: "l", Type: "ecc-p256"})
	on.Store(false)
	// Under D the officer's PolicyTemplate (session 1) sees the changed
	// template before the guard session's HMAC (session 2) does: either
	// refusal comes from the TPM, and nothing is derived.
	if flipped.Load() == 0 || !(errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm2.TPMRCPolicyFail)) {
		t.Fatalf("derive through an interposer that changed %d templates: %v, want forged or TPM_RC_POLICY_FAIL", flipped.Load(), err)
	}
}

// rspMangler applies fn to the response of every successful command with
// code cc that carries sessions, while on is set.
type rspMangler struct {
	next transport.TPM
	on   *atomic.Bool
	cc   tpm2.TPMCC
	fn   func(cmd, rsp []byte) []byte
}

func (m rspMangler) Send(cmd []byte) ([]byte, error) {
	rsp, err := m.next.Send(cmd)
	if err != nil || !m.on.Load() || len(cmd) < 10 || len(rsp) < 14 ||
		tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != m.cc ||
		binary.BigEndian.Uint16(cmd[0:2]) != uint16(tpm2.TPMSTSessions) || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	return m.fn(cmd, append([]byte(nil), rsp...)), nil
}

// clearContinue clears continueSession in the first response session of a
// response with nHandles response handles; the HMAC is left as it is.
func clearContinue(nHandles int) func(cmd, rsp []byte) []byte {
	return func(_, rsp []byte) []byte {
		off := 10 + 4*nHandles
		off += 4 + int(binary.BigEndian.Uint32(rsp[off:]))
		off += 2 + int(binary.BigEndian.Uint16(rsp[off:])) // nonceTPM
		rsp[off] &^= 0x01
		return rsp
	}
}

// A forged response that says its session ended (continueSession clear) is
// refused as forged, and the session it named is still flushed: go-tpm
// forgets the handle before it checks the HMAC, provd does not (the
// harness's leak check would see a session left behind).
func TestForgedSessionEndLeaksNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		cc   tpm2.TPMCC
		nh   int
		run  func(t *testing.T, env *swtpmtest.Env) error
	}{
		{"identity: CreatePrimary", tpm2.TPMCCCreatePrimary, 1, func(t *testing.T, env *swtpmtest.Env) error {
			a := testAgent(t, env, nil)
			_, err := a.TPMIdentity(context.Background(), api.IdentityRequest{EKCA: caBundle(t, env)})
			return err
		}},
		{"provision: authenticated PCR_Read", tpm2.TPMCCPCRRead, 0, func(t *testing.T, env *swtpmtest.Env) error {
			a := testAgent(t, env, nil)
			_, err := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCA: caBundle(t, env)})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var on atomic.Bool
			env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
				return rspMangler{next: next, on: &on, cc: tc.cc, fn: clearContinue(tc.nh)}
			}))
			on.Store(true)
			err := tc.run(t, env)
			on.Store(false)
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("%v, want ErrResponseForged", err)
			}
		})
	}
}
