package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// loadExternalInterposer is the whole bus attacker of the trust issue. It
// answers ReadPublic of the SRK and CreatePrimary under the owner hierarchy
// with a key of its own. When a session is then started salted to the SRK
// handle, it loads its own private key into the real TPM (TPM2_LoadExternal,
// NULL hierarchy), points StartAuthSession's tpmKey at it and flushes it:
// the salt provd encrypted to the attacker's key is decrypted by the TPM
// with the same key, both ends derive the same session key, response HMACs
// verify, and the attacker, who derives that key too, decrypts every
// parameter the session encrypts. Where a command names the SRK, provd's
// HMACs cover the attacker's name for it and the TPM's the real one: the
// attacker checks provd's HMAC under its key (then it shares the session
// with provd) and signs the real cpHash. Everything it decrypts is kept in
// seen. It never changes a session salted to any other handle (the EK's):
// it cannot decrypt that salt.
type loadExternalInterposer struct {
	next transport.TPM
	on   *atomic.Bool
	key  *ecdh.PrivateKey
	pub  tpm2.TPMTPublic // the SRK template with the attacker's point
	name tpm2.TPM2BName

	mu        sync.Mutex
	sessions  map[uint32]*stolenSession
	seen      bytes.Buffer // every parameter decrypted with a stolen session key
	forged    int          // ReadPublic and CreatePrimary responses given its key
	hijacked  int          // sessions the TPM started with the attacker's key
	rewritten int          // command HMACs it recomputed over the SRK's real name
	notShared int          // command HMACs of its sessions that do not verify under its key: provd salted elsewhere
	failed    []error      // attacks that could not be mounted

	// copies, when not nil, are the handles its forged CreatePrimary
	// answers named, each taken for the SRK as 0x81000001 is (review 33:
	// the SRK's transient copy where the handle is empty).
	copies map[uint32]bool
}

// isSRK reports whether the attacker takes h for the SRK: 0x81000001, or a
// copy it answered for (copies).
func (x *loadExternalInterposer) isSRK(h tpm2.TPMHandle) bool {
	return h == tpm.SRKHandle || x.copies[uint32(h)]
}

// stolenSession is what the attacker knows of a session it hijacked.
type stolenSession struct {
	key      []byte // sessionKey
	aesBits  int    // 0: the session encrypts nothing
	nonceTPM []byte // the TPM's last nonce
}

func newLoadExternalInterposer(t *testing.T, on *atomic.Bool) *loadExternalInterposer {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x := &loadExternalInterposer{on: on, key: k, pub: tpm.SRKTemplate, sessions: map[uint32]*stolenSession{}}
	x.pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, x.point())
	name, err := tpm2.ObjectName(&x.pub)
	if err != nil {
		t.Fatal(err)
	}
	x.name = *name
	return x
}

func (x *loadExternalInterposer) wrap(next transport.TPM) transport.TPM {
	x.next = next
	return x
}

func (x *loadExternalInterposer) point() *tpm2.TPMSECCPoint {
	raw := x.key.PublicKey().Bytes() // 04 || X || Y
	return &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}}
}

// Handles in the command and response handle areas of the commands whose
// session parameters the attacker reads.
var (
	cmdHandles = map[tpm2.TPMCC]int{
		tpm2.TPMCCCreate: 1, tpm2.TPMCCCreateLoaded: 1, tpm2.TPMCCLoad: 1, tpm2.TPMCCUnseal: 1, tpm2.TPMCCSign: 1,
		tpm2.TPMCCECDHZGen: 1, tpm2.TPMCCHMAC: 1, tpm2.TPMCCHMACStart: 1, tpm2.TPMCCSequenceUpdate: 1,
		tpm2.TPMCCSequenceComplete: 1, tpm2.TPMCCHash: 0, tpm2.TPMCCCreatePrimary: 1, tpm2.TPMCCPCRRead: 0,
		tpm2.TPMCCRSADecrypt: 1, tpm2.TPMCCImport: 1, tpm2.TPMCCDuplicate: 2, tpm2.TPMCCReadPublic: 1,
		tpm2.TPMCCGetRandom: 0, tpm2.TPMCCNVRead: 2, tpm2.TPMCCNVWrite: 2, tpm2.TPMCCPolicySecret: 2,
		tpm2.TPMCCEvictControl: 2, tpm2.TPMCCEncryptDecrypt2: 1,
	}
	rspHandles = map[tpm2.TPMCC]int{
		tpm2.TPMCCCreatePrimary: 1, tpm2.TPMCCCreateLoaded: 1, tpm2.TPMCCLoad: 1, tpm2.TPMCCHMACStart: 1,
	}
)

type cmdSession struct {
	handle uint32
	nonce  []byte
	attrs  byte
	hmacAt int // offset of the HMAC's buffer in the command
}

func (x *loadExternalInterposer) Send(cmd []byte) ([]byte, error) {
	if !x.on.Load() || len(cmd) < 14 {
		return x.next.Send(cmd)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	first := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
	if cc == tpm2.TPMCCStartAuthSession && x.isSRK(first) {
		return x.hijack(cmd)
	}
	if cc == tpm2.TPMCCFlushContext {
		delete(x.sessions, uint32(first))
		delete(x.copies, uint32(first))
	}
	ss := x.readCommand(cc, cmd)
	cmd = x.rewriteHMACs(cc, cmd, ss)
	rsp, err := x.next.Send(cmd)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	x.readResponse(cc, cmd, rsp, ss)
	switch {
	case cc == tpm2.TPMCCReadPublic && x.isSRK(first):
		x.forged++
		return x.readPublicAnswer(cmd, rsp), nil
	case cc == tpm2.TPMCCCreatePrimary && first == tpm2.TPMRHOwner:
		x.forged++
		if x.copies != nil {
			x.copies[binary.BigEndian.Uint32(rsp[10:14])] = true
		}
		return x.createPrimaryAnswer(cmd, rsp), nil
	}
	return rsp, nil
}

// hijack starts the session salted to the attacker's key, loaded in the
// TPM for the command, and derives its session key.
func (x *loadExternalInterposer) hijack(cmd []byte) ([]byte, error) {
	sens := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC,
		Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: x.key.Bytes()})}
	pub := tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{Decrypt: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, x.point()),
	}
	le, err := (tpm2.LoadExternal{InPrivate: tpm2.New2B(sens), InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHNull}).Execute(x.next)
	if err != nil {
		x.failed = append(x.failed, fmt.Errorf("LoadExternal: %w", err))
		return x.next.Send(cmd)
	}
	c := append([]byte(nil), cmd...)
	binary.BigEndian.PutUint32(c[10:14], uint32(le.ObjectHandle))
	rsp, err := x.next.Send(c)
	if _, ferr := (tpm2.FlushContext{FlushHandle: le.ObjectHandle}).Execute(x.next); ferr != nil {
		x.failed = append(x.failed, fmt.Errorf("flushing its key: %w", ferr))
	}
	if err != nil || len(rsp) < 16 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		if err == nil {
			x.failed = append(x.failed, fmt.Errorf("StartAuthSession with its key: rc 0x%x", rsp[6:10]))
		}
		return rsp, err
	}
	// nonceCaller, encryptedSalt, sessionType, symmetric, authHash.
	off := 18
	nc := tpm2B(c, &off)
	encSalt := tpm2B(c, &off)
	off++
	aesBits := 0
	if tpm2.TPMAlgID(binary.BigEndian.Uint16(c[off:])) == tpm2.TPMAlgAES {
		aesBits = int(binary.BigEndian.Uint16(c[off+2:]))
	}
	eph, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](encSalt)
	if err != nil {
		x.failed = append(x.failed, fmt.Errorf("the salt: %w", err))
		return rsp, nil
	}
	ephPub, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, eph.X.Buffer...), eph.Y.Buffer...))
	if err != nil {
		x.failed = append(x.failed, fmt.Errorf("the salt's point: %w", err))
		return rsp, nil
	}
	z, err := x.key.ECDH(ephPub)
	if err != nil {
		x.failed = append(x.failed, fmt.Errorf("ECDH: %w", err))
		return rsp, nil
	}
	salt := tpm2.KDFe(crypto.SHA256, z, "SECRET", eph.X.Buffer, x.point().X.Buffer, 256)
	roff := 14
	nonceTPM := tpm2B(rsp, &roff)
	x.sessions[binary.BigEndian.Uint32(rsp[10:14])] = &stolenSession{
		key:      tpm2.KDFa(crypto.SHA256, salt, "ATH", nonceTPM, nc, 256),
		aesBits:  aesBits,
		nonceTPM: append([]byte(nil), nonceTPM...),
	}
	x.hijacked++
	return rsp, nil
}

// readCommand decrypts the first parameter of a command for each stolen
// session that encrypts it, and returns the command's sessions.
func (x *loadExternalInterposer) readCommand(cc tpm2.TPMCC, cmd []byte) []cmdSession {
	nh, ok := cmdHandles[cc]
	if !ok || tpm2.TPMST(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTSessions {
		return nil
	}
	off := 10 + 4*nh
	end := off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
	off += 4
	var ss []cmdSession
	for off < end {
		s := cmdSession{handle: binary.BigEndian.Uint32(cmd[off:])}
		off += 4
		s.nonce = tpm2B(cmd, &off)
		s.attrs = cmd[off]
		off++
		s.hmacAt = off + 2
		tpm2B(cmd, &off)
		ss = append(ss, s)
	}
	for _, s := range ss {
		if st := x.sessions[s.handle]; st != nil && s.attrs&0x20 != 0 {
			x.decrypt(st, cmd[end:], s.nonce, st.nonceTPM)
		}
	}
	return ss
}

// rewriteHMACs recomputes the command HMAC of every stolen session in a
// command that names the SRK: provd computed it over the attacker's name for
// the SRK, the TPM checks it over the real one. The attacker knows the
// session key, so it signs the real cpHash (Part 1, 19.6.5); response HMACs
// cover no names and need nothing.
func (x *loadExternalInterposer) rewriteHMACs(cc tpm2.TPMCC, cmd []byte, ss []cmdSession) []byte {
	nh := cmdHandles[cc]
	names := false
	for i := range nh {
		names = names || x.isSRK(tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10+4*i:])))
	}
	if !names || len(ss) == 0 {
		return cmd
	}
	// cpHash as provd computed it (the attacker's name for the SRK) and as
	// the TPM will (the real one).
	provds, real := sha256.New(), sha256.New()
	provds.Write(cmd[6:10])
	real.Write(cmd[6:10])
	for i := range nh {
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10+4*i:]))
		name, err := x.realName(h)
		if err != nil {
			x.failed = append(x.failed, err)
			return cmd
		}
		real.Write(name)
		if x.isSRK(h) {
			name = x.name.Buffer
		}
		provds.Write(name)
	}
	off := 10 + 4*nh
	params := cmd[off+4+int(binary.BigEndian.Uint32(cmd[off:])):]
	provds.Write(params)
	real.Write(params)
	provdsCP, realCP := provds.Sum(nil), real.Sum(nil)
	c := append([]byte(nil), cmd...)
	for i, sess := range ss {
		st := x.sessions[sess.handle]
		if st == nil {
			continue
		}
		var extra []byte
		if i == 0 { // the first session's HMAC covers the nonces of the decrypt and encrypt sessions
			for _, o := range ss[1:] {
				if o.attrs&0x60 == 0 {
					continue
				}
				ost := x.sessions[o.handle]
				if ost == nil {
					x.failed = append(x.failed, fmt.Errorf("cc 0x%x: an encryption session it does not know", uint32(cc)))
					return cmd
				}
				extra = append(extra, ost.nonceTPM...)
			}
		}
		mac := func(cpHash []byte) []byte {
			m := hmac.New(sha256.New, st.key)
			m.Write(cpHash)
			m.Write(sess.nonce)
			m.Write(st.nonceTPM)
			m.Write(extra)
			m.Write([]byte{sess.attrs})
			return m.Sum(nil)
		}
		// Only where provd's HMAC verifies under the attacker's key does
		// it share the session with provd (provd salted to its key);
		// otherwise rewriting gains it nothing.
		if !hmac.Equal(mac(provdsCP), c[sess.hmacAt:sess.hmacAt+sha256.Size]) {
			x.notShared++
			continue
		}
		copy(c[sess.hmacAt:], mac(realCP))
		x.rewritten++
	}
	return c
}

// realName is the name the TPM gives handle h.
func (x *loadExternalInterposer) realName(h tpm2.TPMHandle) ([]byte, error) {
	switch h >> 24 {
	case 0x80, 0x81:
		rp, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(x.next)
		if err != nil {
			return nil, fmt.Errorf("ReadPublic 0x%x: %w", uint32(h), err)
		}
		return rp.Name.Buffer, nil
	case 0x01:
		rp, err := (tpm2.NVReadPublic{NVIndex: h}).Execute(x.next)
		if err != nil {
			return nil, fmt.Errorf("NV_ReadPublic 0x%x: %w", uint32(h), err)
		}
		return rp.NVName.Buffer, nil
	}
	return binary.BigEndian.AppendUint32(nil, uint32(h)), nil
}

// readResponse decrypts the first response parameter for each stolen
// session that encrypts it and follows the sessions' nonces.
func (x *loadExternalInterposer) readResponse(cc tpm2.TPMCC, cmd, rsp []byte, ss []cmdSession) {
	if len(ss) == 0 {
		return
	}
	off := 10 + 4*rspHandles[cc]
	params := rsp[off+4 : off+4+int(binary.BigEndian.Uint32(rsp[off:]))]
	off += 4 + len(params)
	for _, s := range ss {
		nonceTPM := tpm2B(rsp, &off)
		attrs := rsp[off]
		off++
		tpm2B(rsp, &off)
		st := x.sessions[s.handle]
		if st == nil {
			continue
		}
		if s.attrs&0x40 != 0 {
			x.decrypt(st, params, nonceTPM, s.nonce)
		}
		st.nonceTPM = append([]byte(nil), nonceTPM...)
		if attrs&0x01 == 0 {
			delete(x.sessions, s.handle)
		}
	}
}

// decrypt decrypts the sized buffer that starts params (AES-CFB, Part 1
// 21.3) and keeps the plaintext.
func (x *loadExternalInterposer) decrypt(st *stolenSession, params, newer, older []byte) {
	if st.aesBits == 0 || len(params) < 2 {
		return
	}
	n := int(binary.BigEndian.Uint16(params))
	if len(params) < 2+n {
		return
	}
	kb := st.aesBits / 8
	keyIV := tpm2.KDFa(crypto.SHA256, st.key, "CFB", newer, older, (kb+16)*8)
	b, err := aes.NewCipher(keyIV[:kb])
	if err != nil {
		x.failed = append(x.failed, err)
		return
	}
	plain := make([]byte, n)
	//lint:ignore SA1019 the TPM's parameter encryption is AES-CFB: the attacker reads what the TPM uses
	cipher.NewCFBDecrypter(b, keyIV[kb:]).XORKeyStream(plain, params[2:2+n])
	x.seen.Write(plain)
}

// readPublicAnswer is the TPM's ReadPublic response with the attacker's
// public area, name and qualified name.
func (x *loadExternalInterposer) readPublicAnswer(cmd, rsp []byte) []byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHOwner)))
	h.Write(x.name.Buffer)
	qn := tpm2.TPM2BName{Buffer: append(binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgSHA256)), h.Sum(nil)...)}
	var p []byte
	p = append(p, tpm2.Marshal(tpm2.New2B(x.pub))...)
	p = append(p, tpm2.Marshal(x.name)...)
	p = append(p, tpm2.Marshal(qn)...)
	return withParams(cmd, rsp, 0, p)
}

// createPrimaryAnswer is the TPM's CreatePrimary response with the
// attacker's outPublic and name; creation data and ticket are the TPM's.
func (x *loadExternalInterposer) createPrimaryAnswer(cmd, rsp []byte) []byte {
	off := 10 + 4
	if tpm2.TPMST(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
		off += 4
	}
	tpm2B(rsp, &off) // outPublic
	mid := off
	tpm2B(rsp, &off) // creationData
	tpm2B(rsp, &off) // creationHash
	off += 2 + 4     // creationTicket: tag, hierarchy
	tpm2B(rsp, &off) // its digest
	var p []byte
	p = append(p, tpm2.Marshal(tpm2.New2B(x.pub))...)
	p = append(p, rsp[mid:off]...)
	p = append(p, tpm2.Marshal(x.name)...)
	return withParams(cmd, rsp, 1, p)
}

// withParams is rsp (nh response handles) with its parameters replaced,
// the response sessions (whose HMACs no longer match) kept.
func withParams(cmd, rsp []byte, nh int, params []byte) []byte {
	off := 10 + 4*nh
	out := append([]byte(nil), rsp[:off]...)
	var sessions []byte
	if tpm2.TPMST(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
		sessions = rsp[off+4+int(binary.BigEndian.Uint32(rsp[off:])):]
		out = binary.BigEndian.AppendUint32(out, uint32(len(params)))
	}
	out = append(append(out, params...), sessions...)
	binary.BigEndian.PutUint32(out[2:6], uint32(len(out)))
	return out
}

// tpm2B returns the sized buffer at *off and moves past it.
func tpm2B(b []byte, off *int) []byte {
	n := int(binary.BigEndian.Uint16(b[*off:]))
	v := b[*off+2 : *off+2+n]
	*off += 2 + n
	return v
}

// leakIn is the offset of the first 8-byte window of secret in b, or -1
// (swtpmtest.Recorder.Leak's rule).
func leakIn(b, secret []byte) int {
	for i := 0; i+8 <= len(secret); i++ {
		if bytes.Contains(b, secret[i:i+8]) {
			return i
		}
	}
	return -1
}

// Seen is a copy of what the attacker decrypted.
func (x *loadExternalInterposer) Seen() []byte {
	x.mu.Lock()
	defer x.mu.Unlock()
	return bytes.Clone(x.seen.Bytes())
}

// fullBus is one TPM with the attacker and two recorders: one between provd
// and the attacker (what provd sends and gets), one between the attacker
// and the TPM (what the TPM sends and gets).
type fullBus struct {
	env                *swtpmtest.Env
	x                  *loadExternalInterposer
	on                 *atomic.Bool
	provdSide, tpmSide *swtpmtest.Recorder
}

func startFullBus(t *testing.T) *fullBus {
	t.Helper()
	b := &fullBus{on: &atomic.Bool{}, provdSide: &swtpmtest.Recorder{}, tpmSide: &swtpmtest.Recorder{}}
	b.x = newLoadExternalInterposer(t, b.on)
	b.env = swtpmtest.Start(t, swtpmtest.WithRecorder(b.tpmSide), swtpmtest.WithWrap(b.x.wrap), swtpmtest.WithRecorder(b.provdSide))
	return b
}

// noPlaintext fails t for every secret seen on either side of the bus or
// decrypted by the attacker.
func (b *fullBus) noPlaintext(t *testing.T, secrets map[string][]byte) {
	t.Helper()
	seen := b.x.Seen()
	for name, s := range secrets {
		if i := b.provdSide.Leak(s); i >= 0 {
			t.Errorf("%s: bytes %d..%d crossed the bus (provd's side) in plaintext", name, i, i+8)
		}
		if i := b.tpmSide.Leak(s); i >= 0 {
			t.Errorf("%s: bytes %d..%d crossed the bus (the TPM's side) in plaintext", name, i, i+8)
		}
		if i := leakIn(seen, s); i >= 0 {
			t.Errorf("%s: the attacker decrypted bytes %d..%d", name, i, i+8)
		}
	}
	t.Logf("recorded %d bytes on provd's side, %d on the TPM's; the attacker answered %d reads with its key, hijacked %d sessions, "+
		"recomputed %d command HMACs (%d of its sessions were not provd's), decrypted %d bytes",
		b.provdSide.Len(), b.tpmSide.Len(), b.x.forged, b.x.hijacked, b.x.rewritten, b.x.notShared, len(seen))
}

// The sealed secret and the ECDH peer every run uses: distinctive bytes
// to look for on the bus.
var (
	interposerSealed = []byte("provd full-interposer test: THE SEALED SECRET 7e1d0c2b")
	controlSecret    = []byte("provd full-interposer test: the control's plaintext 5a3c")
)

// fullSequence runs what a device does with provd on a provisioned state
// (seal, unseal, key create and sign, ECDH with the created ecc-p256 ecdh
// key "dh" and peer), each step on an Agent from open, and returns each
// step's error; dhWant is the shared secret ECDH must return.
func fullSequence(ctx context.Context, t *testing.T, open func() (*Agent, func(), error), blob []byte, peer *ecdh.PrivateKey, dhWant []byte) map[string]error {
	t.Helper()
	errs := map[string]error{}
	step := func(name string, fn func(a *Agent) error) {
		a, done, err := open()
		if err == nil {
			err = fn(a)
			done()
		}
		errs[name] = err
	}
	step("seal", func(a *Agent) error {
		_, err := a.Seal(ctx, api.SealRequest{Data: interposerSealed})
		return err
	})
	step("unseal", func(a *Agent) error {
		got, err := a.Unseal(ctx, blob)
		if err == nil && !bytes.Equal(got, interposerSealed) {
			return fmt.Errorf("unsealed %q", got)
		}
		return err
	})
	step("key create", func(a *Agent) error {
		_, err := a.CreateKey(ctx, api.CreateRequest{Name: "sig2", Type: "ecc-p256"})
		return err
	})
	step("sign", func(a *Agent) error {
		d := sha256.Sum256([]byte("a message"))
		_, err := a.Sign(ctx, "sig", d[:], api.SignOptions{})
		return err
	})
	step("ecdh", func(a *Agent) error {
		z, err := a.ECDH(ctx, "dh", peer.PublicKey())
		if err == nil && !bytes.Equal(z, dhWant) {
			return fmt.Errorf("shared secret %x, want %x", z, dhWant)
		}
		return err
	})
	return errs
}

// prepare provisions honestly, with the attacker off, creates the keys the
// sequence uses and seals the secret (keysAndSecret).
func prepare(ctx context.Context, t *testing.T, a *Agent, ekca []byte, peer *ecdh.PrivateKey) ([]byte, map[string][]byte) {
	t.Helper()
	if _, err := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, EKCA: ekca}); err != nil {
		t.Fatal(err)
	}
	return keysAndSecret(ctx, t, a, peer)
}

// keysAndSecret creates the keys the sequence uses on a provisioned state
// and seals the secret; it returns the sealed blob and the secrets to look
// for: the sealed one and the ECDH shared secret of "dh" with peer.
func keysAndSecret(ctx context.Context, t *testing.T, a *Agent, peer *ecdh.PrivateKey) ([]byte, map[string][]byte) {
	t.Helper()
	for _, k := range []api.CreateRequest{{Name: "sig", Type: "ecc-p256"}, {Name: "dh", Type: "ecc-p256", Usage: "ecdh"}} {
		if _, err := a.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := a.Seal(ctx, api.SealRequest{Data: interposerSealed})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, err := a.KeyPublic(ctx, "dh")
	if err != nil {
		t.Fatal(err)
	}
	k, err := pub.(*ecdsa.PublicKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	z, err := peer.ECDH(k)
	if err != nil {
		t.Fatal(err)
	}
	return blob, map[string][]byte{"sealed secret": interposerSealed, "ECDH shared secret": z}
}

// unpinnedState is a state provisioned honestly, with keys and a sealed
// secret, whose identity record is then deleted (as root could, or as a
// state provisioned before pinning has none), closed and left on a fresh
// connection, as a new process finds it.
func unpinnedState(ctx context.Context, t *testing.T, b *fullBus) (dir string, blob []byte, secrets map[string][]byte, peer *ecdh.PrivateKey) {
	t.Helper()
	dir = t.TempDir() + "/state"
	a, err := New(Config{TPM: b.env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	peer = ecdhPeer(t)
	blob, secrets = prepare(ctx, t, a, caBundle(t, b.env), peer)
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.Delete(recIdentity) }); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b.env.Reopen() // a connection that pins nothing, as a new process has
	return dir, blob, secrets, peer
}

// attackBareConnection mounts the attack on b's connection as it is (the
// SRK taken from the bus): the TPM starts the session with the attacker's
// key, the response HMAC verifies, and the attacker reads a parameter that
// crossed the bus encrypted. It is the control that shows the attacker's
// machinery works.
func attackBareConnection(t *testing.T, b *fullBus) {
	t.Helper()
	hijacked := b.x.hijacked
	b.on.Store(true)
	defer b.on.Store(false)
	srk, err := b.env.TPM.SRK() // ReadPublic and CreatePrimary, as before pinning
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(srk.Name.Buffer, b.x.name.Buffer) {
		t.Fatalf("the SRK is %x, not the attacker's %x: the forgery was not taken", srk.Name.Buffer, b.x.name.Buffer)
	}
	var digest []byte
	err = b.env.TPM.WithEncryptSession(tpm.EncryptInOut, func(s tpm2.Session) error {
		rsp, err := (tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: controlSecret}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHNull}).Execute(b.env.TPM, s)
		if err == nil {
			digest = rsp.OutHash.Buffer
		}
		return err
	})
	want := sha256.Sum256(controlSecret)
	// The TPM hashed what provd sent: it decrypted the parameter with
	// the session key of the attacker's salt; go-tpm verified the
	// response HMAC.
	if err != nil || !bytes.Equal(digest, want[:]) {
		t.Fatalf("Hash in a session salted to the attacker's key: %x, %v", digest, err)
	}
	if b.x.hijacked != hijacked+1 || len(b.x.failed) > 0 {
		t.Fatalf("hijacked %d sessions, failures %v", b.x.hijacked-hijacked, b.x.failed)
	}
	if i := b.provdSide.Leak(controlSecret); i >= 0 {
		t.Fatalf("the control's plaintext crossed the bus unencrypted (bytes %d..): the control proves nothing", i)
	}
	seen := b.x.Seen()
	if leakIn(seen, controlSecret) < 0 || !bytes.Contains(seen, want[:]) {
		t.Fatalf("the attacker did not decrypt the command and the response: the attack does not work (%x)", seen)
	}
}

// ecdhPeer is a software peer for the ECDH step.
func ecdhPeer(t *testing.T) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// reopen opens the state in dir afresh for each step, as each CLI
// invocation does.
func reopen(env *swtpmtest.Env, dir string) func() (*Agent, func(), error) {
	return func() (*Agent, func(), error) {
		a, err := New(Config{TPM: env.TPM, StateDir: dir})
		if err != nil {
			return nil, nil, err
		}
		return a, func() { a.Close() }, nil
	}
}

// The full interposer of the trust issue (part 1's done-when), on every
// operation, at both times it can appear: at first contact and after
// provisioning (and in the middle of a run). A control shows that the
// attack itself works where nothing is pinned: on a bare connection the
// TPM starts the session with the attacker's key, the response HMAC
// verifies, and the attacker reads a parameter that crossed the bus
// encrypted (where provd took the SRK from the bus, on a state without its
// identity record, it also recomputed the command HMACs that name the SRK
// and decrypted the sealed secret and the ECDH shared secret). A state
// without its identity record now refuses every operation before any
// session (exit 15), the same attacker then shown live on the same bus;
// provision --force is its way out, refused through the attacker and
// pinning the TPM on an honest bus. With provd's pinning the attacker is
// refused (exit 15) wherever it acts and decrypts nothing; without it, the
// same sequence succeeds and no secret crosses the bus in plaintext.
func TestFullInterposer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("control: the attack works on a connection that pins nothing", func(t *testing.T) {
		b := startFullBus(t)
		attackBareConnection(t, b)
	})

	t.Run("an unpinned state refuses every operation that carries a secret", func(t *testing.T) {
		// A state without its identity record (provisioned before pinning,
		// or the record deleted by root) on a fresh connection: provd
		// would take the SRK from the bus, so it refuses before any
		// session (exit 15) and names the way out.
		b := startFullBus(t)
		dir, blob, secrets, peer := unpinnedState(ctx, t, b)
		b.on.Store(true)
		errs := fullSequence(ctx, t, reopen(b.env, dir), blob, peer, secrets["ECDH shared secret"])
		b.on.Store(false)
		for op, err := range errs {
			if !errors.Is(err, errNotPinned) || api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("%s on the unpinned state through the attacker: %v (exit %d), want not pinned (15)", op, err, api.ExitCode(err))
			}
		}
		if b.x.hijacked != 0 || len(b.x.failed) > 0 {
			t.Errorf("the attacker hijacked %d sessions (failures %v); want none given to its key", b.x.hijacked, b.x.failed)
		}
		b.noPlaintext(t, secrets)
		// The same attacker on the same bus, on a connection that salts to
		// the SRK as the bus states it (what provd did on such a state):
		// it is live and wins.
		attackBareConnection(t, b)
	})

	t.Run("an unpinned state: provision --force is the way out", func(t *testing.T) {
		b := startFullBus(t)
		dir, _, _, peer := unpinnedState(ctx, t, b)
		ekca := caBundle(t, b.env)
		force := func() (api.ProvisionResult, error) {
			a, done, err := reopen(b.env, dir)()
			if err != nil {
				return api.ProvisionResult{}, err
			}
			defer done()
			return a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, Force: true, EKCA: ekca})
		}
		// Through the attacker, first contact refuses: nothing is pinned
		// to its key and the state stays as it was.
		b.on.Store(true)
		_, err := force()
		b.on.Store(false)
		if !errors.Is(err, api.ErrUntrustedTPM) || !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
			t.Fatalf("provision --force on the unpinned state through the attacker: %v (exit %d), want untrusted, forged (15)", err, api.ExitCode(err))
		}
		if b.x.hijacked != 0 {
			t.Errorf("the attacker hijacked %d sessions", b.x.hijacked)
		}
		a, done, err := reopen(b.env, dir)()
		if err != nil {
			t.Fatal(err)
		}
		if st, err := a.Status(ctx); err != nil || !st.Provisioned || st.TPMTrust != "" {
			t.Errorf("after the refused provision --force: provisioned %v, trust %q (%v); want the unpinned state unchanged", st.Provisioned, st.TPMTrust, err)
		}
		done()

		// On an honest bus it establishes and pins the identity.
		res, err := force()
		if err != nil || res.TPMTrust != api.TrustManufacturer {
			t.Fatalf("provision --force on the unpinned state: %+v %v", res, err)
		}
		a, done, err = reopen(b.env, dir)()
		if err != nil {
			t.Fatal(err)
		}
		st, err := a.Status(ctx)
		if err != nil || st.TPMTrust != api.TrustManufacturer || st.Policy == nil || st.Keys != 0 {
			t.Errorf("status after the way out: %+v %v; want pinned by the manufacturer's EK, the policy checked, no keys", st, err)
		}
		blob, secrets := keysAndSecret(ctx, t, a, peer)
		done()

		// Pinned: the attacker is refused at every open, as after any
		// provisioning, and without it everything works.
		b.env.Reopen()
		b.on.Store(true)
		errs := fullSequence(ctx, t, reopen(b.env, dir), blob, peer, secrets["ECDH shared secret"])
		b.on.Store(false)
		for op, err := range errs {
			if !errors.Is(err, tpm.ErrIdentityMismatch) || api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("%s after the way out, through the attacker: %v (exit %d), want the identity mismatch (15)", op, err, api.ExitCode(err))
			}
		}
		b.noPlaintext(t, secrets)
		for op, err := range fullSequence(ctx, t, reopen(b.env, dir), blob, peer, secrets["ECDH shared secret"]) {
			if err != nil {
				t.Errorf("%s after the way out: %v", op, err)
			}
		}
	})

	t.Run("at first contact: provision refuses", func(t *testing.T) {
		b := startFullBus(t)
		ekca := caBundle(t, b.env)
		ek384, err := b.env.TPM.ReadNV(0x01c00016)
		if err != nil {
			t.Fatal(err)
		}
		b.on.Store(true)
		dir := t.TempDir() + "/state"
		a, err := New(Config{TPM: b.env.TPM, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		for name, req := range map[string]api.ProvisionRequest{
			"EK CA":               {PCRs: []int{7}, EKCA: ekca},
			"trust on first use":  {PCRs: []int{7}, TrustOnFirstUse: true},
			"EK CA, the P-384 EK": {PCRs: []int{7}, EKCA: ekca, EKCert: ek384},
			"TOFU, the P-384 EK":  {PCRs: []int{7}, TrustOnFirstUse: true, EKCert: ek384},
		} {
			// Refused as forged, exit 15: at first contact (untrusted
			// too), or, on this TPM with no SRK yet, before it, where
			// the trail the provision begins makes its gate under a
			// transient copy of the SRK (tpm.TransientSRKOnly, since
			// review 30), whose salt the attacker's redirect of
			// 0x81000001 does not reach: the TPM refuses the session's
			// HMAC.
			_, err := a.Provision(ctx, req)
			if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("provision (%s) through the interposer: %v (exit %d), want forged (15)", name, err, api.ExitCode(err))
			}
		}
		if st, err := a.Status(ctx); err != nil || st.Provisioned {
			t.Fatalf("after the refusal: provisioned %v (%v)", st.Provisioned, err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		// Nothing was provisioned: every operation is refused, and none
		// puts a secret in a session the attacker could read.
		errs := fullSequence(ctx, t, reopen(b.env, dir), nil, ecdhPeer(t), nil)
		for op, err := range errs {
			if err == nil {
				t.Errorf("%s on the unprovisioned state through the interposer: succeeded", op)
			}
		}
		b.on.Store(false)
		// The one session it can take is the audit gate's creation for the
		// refusal's record (a trail begun before first contact: the SRK is
		// the bus's); it carries no secret (noPlaintext below), and
		// provisioning replaces that gate with one made through the pinned
		// SRK (TestGateRemadeThroughThePinnedSRK).
		if b.x.forged == 0 || b.x.hijacked > 1 || len(b.x.failed) > 0 {
			t.Errorf("the attacker answered %d times, hijacked %d sessions, failed %v; want it to act and be given at most the audit gate's creation",
				b.x.forged, b.x.hijacked, b.x.failed)
		}
		b.noPlaintext(t, map[string][]byte{"sealed secret": interposerSealed})
	})

	t.Run("after provisioning: every open refuses", func(t *testing.T) {
		b := startFullBus(t)
		dir := t.TempDir() + "/state"
		a, err := New(Config{TPM: b.env.TPM, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		peer := ecdhPeer(t)
		blob, secrets := prepare(ctx, t, a, caBundle(t, b.env), peer)
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		b.env.Reopen() // a new connection, as a new process has: only the state pins
		b.on.Store(true)
		errs := fullSequence(ctx, t, reopen(b.env, dir), blob, peer, secrets["ECDH shared secret"])
		errs["provision --force"] = func() error {
			a, done, err := reopen(b.env, dir)()
			if err != nil {
				return err
			}
			defer done()
			_, err = a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, Force: true, EKCA: caBundle(t, b.env)})
			return err
		}()
		b.on.Store(false)
		for op, err := range errs {
			if !errors.Is(err, tpm.ErrIdentityMismatch) || api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("%s through the interposer: %v (exit %d), want the identity mismatch (15)", op, err, api.ExitCode(err))
			}
		}
		// The one session it can take is the audit gate's creation for the
		// refusal's record (a trail begun before first contact: the SRK is
		// the bus's); it carries no secret (noPlaintext below), and
		// provisioning replaces that gate with one made through the pinned
		// SRK (TestGateRemadeThroughThePinnedSRK).
		if b.x.forged == 0 || b.x.hijacked > 1 || len(b.x.failed) > 0 {
			t.Errorf("the attacker answered %d times, hijacked %d sessions, failed %v; want it to act and be given at most the audit gate's creation",
				b.x.forged, b.x.hijacked, b.x.failed)
		}
		b.noPlaintext(t, secrets)
	})

	t.Run("in the middle of a run: every salted session refuses", func(t *testing.T) {
		b := startFullBus(t)
		a := testAgent(t, b.env, nil)
		peer := ecdhPeer(t)
		blob, secrets := prepare(ctx, t, a, caBundle(t, b.env), peer)
		b.on.Store(true)
		errs := fullSequence(ctx, t, func() (*Agent, func(), error) { return a, func() {}, nil }, blob, peer, secrets["ECDH shared secret"])
		b.on.Store(false)
		for op, err := range errs {
			if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("%s through the interposer: %v (exit %d), want forged (15)", op, err, api.ExitCode(err))
			}
		}
		if b.x.hijacked == 0 {
			t.Errorf("the attacker hijacked no session (failures %v)", b.x.failed)
		}
		b.noPlaintext(t, secrets)
	})

	t.Run("without the interposer: the same sequence succeeds", func(t *testing.T) {
		b := startFullBus(t) // the attacker stays off: the recorders only
		dir := t.TempDir() + "/state"
		a, err := New(Config{TPM: b.env.TPM, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		peer := ecdhPeer(t)
		blob, secrets := prepare(ctx, t, a, caBundle(t, b.env), peer)
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		for op, err := range fullSequence(ctx, t, reopen(b.env, dir), blob, peer, secrets["ECDH shared secret"]) {
			if err != nil {
				t.Errorf("%s: %v", op, err)
			}
		}
		b.noPlaintext(t, secrets)
	})
}
