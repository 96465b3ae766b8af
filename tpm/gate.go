package tpm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// A gate is a key whose authorization value only its owner knows (provd
// keeps it, with the key's blob, in its state directory, mode 0700) and whose
// private part never leaves the TPM (fixedTPM|fixedParent). An NV index is
// gated when its writes need a policy session that proved the gate's
// authorization (TPM2_PolicySecret) for one command code: GatePolicy(gate's
// name, NV_Extend) as its authPolicy, TPMA_NV_AUTHWRITE clear and
// TPMA_NV_POLICYWRITE set. Another process can still read the index (its
// password is empty, so PolicyNV works too) but cannot write it: the blob
// crosses the bus at every load and can be replayed, but PolicySecret needs
// the authorization value, which crosses the bus only encrypted (inside
// TPM2_Create's inSensitive) and is proven by HMAC; a key of its own has
// another name. Undefining the index stays possible for whoever holds the
// owner authorization, and an index redefined with the same public area has
// the same name: a gate keeps others from writing, a pinned name (the gate's
// name is inside it) makes a redefinition with another policy visible.

// GateAuthSize is the size of a gate's authorization value: the digest size
// of its nameAlg (SHA-256), the most the TPM takes.
const GateAuthSize = 32

// NewGateAuth draws a gate's authorization value from rand. No byte is zero:
// go-tpm v0.9.8 cuts an HMAC key at its first zero byte (the TPM trims only
// trailing zeros), so a zero inside would make every HMAC differ from the
// TPM's. That leaves 32 bytes of 255 values each (255.8 bits).
func NewGateAuth(rand io.Reader) ([]byte, error) {
	return nonZeroAuth(rand, GateAuthSize)
}

// nonZeroAuth draws n bytes from rand, none zero (see NewGateAuth).
func nonZeroAuth(rand io.Reader, n int) ([]byte, error) {
	auth := make([]byte, n)
	for i := range auth {
		for auth[i] == 0 {
			if _, err := io.ReadFull(rand, auth[i:i+1]); err != nil {
				return nil, fmt.Errorf("authorization value: %w", err)
			}
		}
	}
	return auth, nil
}

// Gate is a loaded gate key with its authorization value (empty for a gate
// created before gates had one). It prints without the value.
type Gate struct {
	Object
	auth []byte
	// persistent: the gate key made persistent at its handle
	// (PersistentGate), proved in place; whatever holds the handle now
	// may be another object.
	persistent bool
}

// PersistentGate is the gate key named name, made persistent at h, with its
// authorization value: its proof needs no TPM2_Load and no flush (issue 14:
// 2 commands per gated extend). Whatever holds h now, a proof in it goes
// through only if it is that key with that value: the name goes into the
// proof's HMAC and the policy digest. A proof that does not go through is
// ErrPersistentGate; the caller then loads the gate from its blob (LoadGate)
// and proves it again.
func PersistentGate(h tpm2.TPMHandle, name, auth []byte) Gate {
	return Gate{Object: Object{Handle: h, Name: tpm2.TPM2BName{Buffer: name}}, auth: auth, persistent: true}
}

// ErrPersistentGate: the proof of a persistent gate (PersistentGate) did
// not go through: the handle is empty or holds another object (evicted or
// replaced by whoever has the owner's authorization), or the TPM or the bus
// refused it. Nothing was proved: the session it went into is spent.
var ErrPersistentGate = errors.New("the persistent gate key did not prove its authorization")

// String names the gate by its handle and name, never its value.
func (g Gate) String() string {
	return fmt.Sprintf("gate 0x%08x (name %x)", uint32(g.Handle), g.Name.Buffer)
}

// GoString is String, for %#v.
func (g Gate) GoString() string { return g.String() }

// CreateGate creates a gate key under parent (empty password) whose
// authorization value is auth: it goes into the TPM only as inSensitive's
// userAuth, encrypted by a session salted to the SRK (Create).
func (t *TPM) CreateGate(parent Object, auth []byte) (Blob, error) {
	if len(auth) != GateAuthSize {
		return Blob{}, fmt.Errorf("gate authorization value of %d bytes, want %d", len(auth), GateAuthSize)
	}
	return t.Create(parent, nil, GateTemplate(), Sensitive{UserAuth: auth})
}

// GateTemplate is the public area of a gate key: ECC P-256, restricted
// signing (so it signs only attestation structures the TPM produced, such as
// TPM2_NV_Certify's, never a digest handed to it), born in the TPM and never
// leaving it, used with its authorization value (userWithAuth): whoever can
// load it must also know that value to use it (CreateGate).
func GateTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
	}
}

// GatePolicy is the SHA-256 policy digest PolicySecret(gate) then
// PolicyCommandCode(cc): satisfied only by a session that proved the gate's
// authorization, and only for command cc.
func GatePolicy(gateName []byte, cc tpm2.TPMCC) ([]byte, error) {
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Name: tpm2.TPM2BName{Buffer: gateName}}}).Update(c); err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyCommandCode{Code: cc}).Update(c); err != nil {
		return nil, err
	}
	return c.Hash().Digest, nil
}

// GatedNVPublic is the public area of a gated owner index: written only
// through authPolicy, read with the empty password (PolicyNV, audit verify)
// or by the owner, no DA counting.
func GatedNVPublic(h tpm2.TPMHandle, nt tpm2.TPMNT, size uint16, authPolicy []byte) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:          nt,
			PolicyWrite: true,
			AuthRead:    true,
			OwnerRead:   true,
			NoDA:        true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: authPolicy},
		DataSize:   size,
	}
}

// GatedExtendPublic is the public area of a SHA-256 extend index whose
// extends are gated by the gate named gateName, written (written) or not.
func GatedExtendPublic(h tpm2.TPMHandle, gateName []byte, written bool) (tpm2.TPMSNVPublic, error) {
	pol, err := GatePolicy(gateName, tpm2.TPMCCNVExtend)
	if err != nil {
		return tpm2.TPMSNVPublic{}, err
	}
	p := GatedNVPublic(h, tpm2.TPMNTExtend, extendSize, pol)
	p.Attributes.Written = written
	return p, nil
}

// NVPublicName is the name of an NV index with public area p, computed offline.
func NVPublicName(p tpm2.TPMSNVPublic) ([]byte, error) {
	n, err := tpm2.NVName(&p)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}

// DefineNV defines the owner index described by pub (owner authorization:
// the empty password, as everywhere provd defines indices) and returns it
// as defined: its name computed from pub, not read back (issue 14: no
// NV_ReadPublic). Neither the define's answer nor a read's has an HMAC, so
// a read proved nothing more; a command that names the index in a session
// (its HMAC, a proof's cpHashA) is refused by the TPM if the index at the
// handle has another name.
func (t *TPM) DefineNV(pub tpm2.TPMSNVPublic) (NVIndex, error) {
	if err := checkNVIndexHandle(pub.NVIndex); err != nil {
		return NVIndex{}, err
	}
	name, err := tpm2.NVName(&pub)
	if err != nil {
		return NVIndex{}, fmt.Errorf("NV index 0x%08x: %w", uint32(pub.NVIndex), err)
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(t); err != nil {
		return NVIndex{}, Wrap("TPM2_NV_DefineSpace", err)
	}
	return NVIndex{Handle: pub.NVIndex, Name: *name, Public: pub}, nil
}

// gateAuth is gate authorized by a one-use HMAC session keyed by its
// authorization value (salted to the SRK when one is pinned): the value
// never crosses the bus. A wrong value is ErrBadAuth.
func (t *TPM) gateAuth(gate Gate) (tpm2.AuthHandle, error) {
	opts, err := t.pinnedSalt()
	if err != nil {
		return tpm2.AuthHandle{}, err
	}
	return gate.Auth(tpm2.HMAC(tpm2.TPMAlgSHA256, 16, append(opts, tpm2.Auth(gate.auth))...)), nil
}

// policySecret is TPM2_PolicySecret of the entity auth authorizes, into p,
// for the command whose cpHash is cpHashA, for gateProofLifetime.
func (p *PolicySession) policySecret(auth tpm2.AuthHandle, cpHashA []byte) error {
	if len(cpHashA) != sha256.Size {
		return errors.New("TPM2_PolicySecret: no command to bind the proof to")
	}
	// From here on the proof may be in the TPM (an answer lost after the
	// TPM ran the command): spend it on every path.
	p.proofUntil = time.Now().Add(gateProofLifetime + time.Second)
	_, err := (tpm2.PolicySecret{
		AuthHandle:    auth,
		PolicySession: p.stepHandle(),
		NonceTPM:      p.s.NonceTPM(),
		CPHashA:       tpm2.TPM2BDigest{Buffer: cpHashA},
		Expiration:    int32(gateProofLifetime / time.Second),
	}).Execute(p.t)
	return Wrap("TPM2_PolicySecret", err)
}

// gateProofLifetime bounds how long a gate's proof lives in its policy
// session (PolicySecret's expiration, counted from the session's nonce):
// a command the proof authorizes, held on the bus, is refused by the TPM
// after it.
const gateProofLifetime = 10 * time.Second

// newGateSession is the policy session ss, started for a gate's proof in
// TPM generation gen at the time started (both read before its start).
func (t *TPM) newGateSession(ss tpm2.Session, gen uint64, started time.Time) *PolicySession {
	return &PolicySession{t: t, s: ss, closer: t.sessionCloser(ss), alg: tpm2.TPMAlgSHA256, start: ss.Handle(), gen: gen, started: started}
}

// spend closes p so that the gate's proof in it, if it got one, can no
// longer authorize anything (found by review: A1 held a gated extend or
// increment and answered it as lost; provd's own retry ran, then the held
// command, and the anchor was extended twice or the policy counter raised
// later). p is flushed, and a witness (the TPM's handle lists in a salted
// audit session) confirms that the TPM holds no session at its handle,
// loaded or saved. Where that cannot be confirmed (the lists or the flush
// kept from the TPM), spend waits until the proof has expired, and asks for
// the sweep. Either way the proof is dead when it returns. Without a pinned
// SRK (before first contact) nothing on the bus is authenticated, the
// session is not salted, and spend only flushes.
func (t *TPM) spend(p *PolicySession) error {
	cerr := p.Close()
	if p.proofUntil.IsZero() || !t.saltToPin() {
		return cerr
	}
	t.proofGone(p)
	return nil
}

// proofGone returns once the gate's proof in p, closed or forgotten, can
// authorize nothing: a witness confirms that the TPM holds no session at
// its handle, or (the sweep asked for) the proof's expiry has passed.
func (t *TPM) proofGone(p *PolicySession) {
	if t.confirmGone(p.start) == nil {
		return
	}
	t.unheld()
	if d := time.Until(p.proofUntil); d > 0 {
		time.Sleep(d)
	}
}

// confirmGone returns nil when a witness confirms that the TPM holds no
// session at h, loaded or saved. Loaded sessions are listed by their
// handles; saved ones by their slot, under the HMAC range whatever their
// type (TPM 2.0 Part 3, GetCapability; swtpm and the reference code: a
// policy session 0x03000001 that anyone context-saved is listed as
// 0x02000001; found by review: A1 saved provd's session, and the exact
// handle was not in either list). A saved session in h's slot counts as h
// (another one there only delays the caller until the proof's expiry).
func (t *TPM) confirmGone(h tpm2.TPMHandle) (err error) {
	w, err := t.OpenWitness()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.Close()) }()
	if !w.Authenticated() {
		return errors.New("the SRK is no longer pinned: the TPM's handles are the bus's word")
	}
	loaded, err := w.Handles(HMACSessions)
	if err != nil {
		return err
	}
	saved, err := w.Handles(PolicySessions)
	if err != nil {
		return err
	}
	const slot = 0x00ffffff
	if slices.Contains(loaded, h) || slices.ContainsFunc(saved, func(s tpm2.TPMHandle) bool { return s&slot == h&slot }) {
		return fmt.Errorf("session 0x%08x is still in the TPM", uint32(h))
	}
	return nil
}

// commandCpHash is the SHA-256 cpHash of command cc on the entities named
// names with parameters params (TPM 2.0 Part 1, 18.7): what its
// authorization covers.
func commandCpHash(cc tpm2.TPMCC, names []tpm2.TPM2BName, params []byte) []byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(cc)))
	for _, n := range names {
		h.Write(n.Buffer)
	}
	h.Write(params)
	return h.Sum(nil)
}

// extendProof is TPM2_NV_Extend's parameters for x with data (data as a
// TPM2B), and the cpHash a gate's proof for that extend is bound to.
func extendProof(x NVIndex, data []byte) (params, cpHash []byte, err error) {
	if len(data) > math.MaxUint16 {
		return nil, nil, fmt.Errorf("NV extend: %d bytes of data is too much", len(data))
	}
	params = binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(data)), uint16(len(data)))
	params = append(params, data...)
	return params, commandCpHash(tpm2.TPMCCNVExtend, []tpm2.TPM2BName{x.Name, x.Name}, params), nil
}

// pinnedSalt is the option that salts a session to the pinned SRK, none
// when no SRK is pinned (before first contact the SRK is only what the bus
// says, and asking for it would create one) or it was evicted.
func (t *TPM) pinnedSalt() ([]tpm2.AuthOption, error) {
	if !t.saltToPin() {
		return nil, nil
	}
	srk, err := t.SRK()
	if err != nil {
		return nil, err
	}
	return []tpm2.AuthOption{tpm2.Salted(srk.Handle, srk.Public)}, nil
}

// gateSession starts a policy session that satisfies GatePolicy(gate, cc),
// salted to the pinned SRK when one is pinned: the TPM then checks the
// command HMAC of the command it authorizes (keyed by the salt, which only
// the TPM and provd know; measured on swtpm: an empty HMAC there is
// TPM_RC_BAD_AUTH, where the unsalted session took it), so a session
// prepared by provd cannot be used for another command, and the response
// HMAC says the command ran.
//
// The proof is for the one command whose cpHash is cpHashA (PolicySecret).
// In an operation's Share whose last command's policy session was kept
// (Spare), the proof goes into that session instead of a new one (issue
// 14: no StartAuthSession, no FlushContext; spare.go says why that holds).
func (t *TPM) gateSession(gate Gate, cc tpm2.TPMCC, cpHashA []byte) (*PolicySession, error) {
	s := t.takeSpare() // the operation's last policy session (spare.go)
	if s == nil {
		opts, err := t.pinnedSalt()
		if err != nil {
			return nil, err
		}
		gen, started := t.Generation(), time.Now()
		ss, err := func() (tpm2.Session, error) {
			defer t.keepShared()() // the proof below is made in it
			ss, _, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, policyNonceSize, opts...)
			return ss, err
		}()
		if err != nil {
			return nil, Wrap("TPM2_StartAuthSession", err)
		}
		s = t.newGateSession(ss, gen, started)
	}
	if err := t.proveGate(s, nil, gate, cc, cpHashA); err != nil {
		return nil, errors.Join(err, t.spend(s))
	}
	return s, nil
}

// proveGate satisfies GatePolicy(gate, cc) in p: TPM2_PolicySecret of the
// gate for the one command whose cpHash is cpHashA, then
// TPM2_PolicyCommandCode(cc). The gate is authorized by k, a keyed HMAC
// session of the caller's, when k is not nil; otherwise by the operation's
// shared session (withSharedAuth) when one is started, by a one-use session
// (gateAuth) when not; in a keyed session the value keys its HMAC, and a
// refusal is told apart (authorizeChecked). The caller spends p if this
// fails (TPM.spend).
//
// cpHashA (commandCpHash) is what limits the proof to the command provd
// means: StartAuthSession's answer has no HMAC, so the session handle the
// proof goes into is the bus's word, and A1 answering it with a session of
// its own would hold the gate's proof for any command the policy allows
// (found by review: A1 extended the audit anchor with data of its own).
// cpHashA is not part of the policy digest: the gated indices' policies
// stay as they are.
func (t *TPM) proveGate(p *PolicySession, k *keyedPolicy, gate Gate, cc tpm2.TPMCC, cpHashA []byte) error {
	secret := func(s tpm2.Session) error { return p.policySecret(gate.Auth(s), cpHashA) }
	var err error
	if k != nil {
		err = t.authorizeChecked(k, gate.Object, gate.auth, 0, secret)
	} else if ok, serr := t.withSharedAuth(gate.Object, gate.auth, 0, secret); ok {
		err = serr
	} else {
		var auth tpm2.AuthHandle
		if auth, err = t.gateAuth(gate); err == nil {
			err = p.policySecret(auth, cpHashA)
		}
	}
	if err != nil {
		if gate.persistent {
			return fmt.Errorf("%w: %w", ErrPersistentGate, err)
		}
		return err
	}
	return p.PolicyCommandCode(cc)
}

func joinClose(err error, s *PolicySession) error {
	if cerr := s.Close(); cerr != nil {
		return fmt.Errorf("%w (and: %v)", err, cerr)
	}
	return err
}

// GatedExtend is a policy session that satisfies GatePolicy(gate,
// NV_Extend) for one extend of one index with one value: prepared (the
// index's public, then StartAuthSession, StartAuthSession and
// PolicySecret, PolicyCommandCode) before the caller commits to anything,
// so that the extend itself is one command. The proof is bound to that
// extend (PolicySecret's cpHashA): whoever holds the session, it extends
// nothing else. Close it on every path (a FlushContext).
type GatedExtend struct {
	t *TPM
	x NVIndex
	// params are the extend's parameters, the data the proof is for.
	params []byte
	s      *PolicySession
	// done: the TPM answered the extend with success (authenticated).
	done bool
	// passed: the session went on to the next extend's GatedExtend, and
	// Close leaves it. The session's generation and start (s.gen,
	// s.started) say whether it can go on (PrepareGatedExtendAgain).
	passed bool
}

// PrepareGatedExtend starts the session for the extend of the gated index
// at h with data, proving the loaded gate's authorization. The gate may be
// flushed as soon as this returns: the session holds the proof.
func (t *TPM) PrepareGatedExtend(h tpm2.TPMHandle, gate Gate, data []byte) (*GatedExtend, error) {
	// The index's name goes into the extend's command HMAC and the proof's
	// cpHashA: a name the bus changed here makes the TPM refuse the extend.
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return nil, err
	}
	return t.PrepareGatedExtendOf(x, gate, data)
}

// PrepareGatedExtendOf is PrepareGatedExtend of x, whose name the caller
// knows (an authenticated read just answered for it, or the index it
// must be): no NV_ReadPublic. The proof is for x's name: if the index at
// x's handle has another, the TPM refuses the extend (its cpHash is not
// the proof's cpHashA) and nothing is extended.
func (t *TPM) PrepareGatedExtendOf(x NVIndex, gate Gate, data []byte) (*GatedExtend, error) {
	params, cpHash, err := extendProof(x, data)
	if err != nil {
		return nil, err
	}
	s, err := t.gateSession(gate, tpm2.TPMCCNVExtend, cpHash)
	if err != nil {
		return nil, err
	}
	return &GatedExtend{t: t, x: x, params: params, s: s}, nil
}

// PrepareGatedExtendAgain prepares one more extend, of x with data, in the
// policy session of prev, whose extend the TPM made (Extend succeeded, so
// the TPM reset the session's policy): the gate's proof again, bound to
// that extend (PolicySecret, PolicyCommandCode), where
// PrepareGatedExtendOf starts and later flushes a session of its own
// (issue 14: 2 commands for a record after another in one operation, as
// provision's after its new anchor's first). gate must be loaded.
//
// ok false, nothing sent: prev cannot go on (its extend not made, it was
// closed or passed on, the TPM's generation moved since its start, or it
// started more than half a proof's lifetime ago: a proof with a nonce
// expires counting from the session's start, TPM 2.0 Part 3,
// PolicySecret); the caller closes prev and prepares anew. Otherwise prev
// is passed on (its Close does nothing) and, on an error, the session is
// spent as PrepareGatedExtendOf's would be.
func (t *TPM) PrepareGatedExtendAgain(prev *GatedExtend, x NVIndex, gate Gate, data []byte) (ge *GatedExtend, ok bool, err error) {
	if !prev.done || prev.passed || !prev.s.canProve() {
		return nil, false, nil
	}
	params, cpHash, err := extendProof(x, data)
	if err != nil {
		return nil, false, err
	}
	prev.passed = true
	if err := t.proveGate(prev.s, nil, gate, tpm2.TPMCCNVExtend, cpHash); err != nil {
		spent := &GatedExtend{t: t, x: x, s: prev.s}
		return nil, true, errors.Join(err, spent.Close())
	}
	return &GatedExtend{t: t, x: x, params: params, s: prev.s}, true, nil
}

// ErrNoSharedSession: ReadPrepareGatedExtend needs a pinned SRK to salt
// its session to; without one the caller reads and prepares apart.
var ErrNoSharedSession = errors.New("no SRK pinned to salt a shared session to")

// ReadPrepareGatedExtend reads the SHA-256 extend index x, which must be
// the index it names (its name goes into the read's command HMAC), and
// prepares one extend of it with gate, in one session where Read and
// PrepareGatedExtend take two: provd's keyed HMAC session, salted to the
// pinned SRK, authorizes the read by x's empty password (its response
// HMAC, keyed by the salt, covers the value) and then proves the gate's
// authorization in TPM2_PolicySecret (its HMAC keyed by the salt and the
// gate's value, which never crosses the bus). 6 commands
// (StartAuthSession, NV_Read, StartAuthSession, PolicySecret,
// PolicyCommandCode, FlushContext) where the two took 8 (a second
// StartAuthSession and flush, an NV_ReadPublic); in an operation's Share,
// whose session reads and proves, 4 (NV_Read, StartAuthSession,
// PolicySecret, PolicyCommandCode).
// A read the TPM refuses (x is not what the caller expects, or was never
// written) returns the TPM's error, nothing prepared. The gate may be
// flushed once this returns. Without a pinned SRK: ErrNoSharedSession.
func (t *TPM) ReadPrepareGatedExtend(x NVIndex, gate Gate, data []byte) (value []byte, ge *GatedExtend, err error) {
	p := x.Public
	if p.Attributes.NT != tpm2.TPMNTExtend || p.NameAlg != tpm2.TPMAlgSHA256 || p.DataSize != extendSize {
		return nil, nil, fmt.Errorf("NV index 0x%08x is not a SHA-256 extend index", uint32(x.Handle))
	}
	params, cpHash, err := extendProof(x, data)
	if err != nil {
		return nil, nil, err
	}
	salt, err := t.pinnedSalt()
	if err != nil {
		return nil, nil, err
	}
	if salt == nil {
		return nil, nil, ErrNoSharedSession
	}
	read := func(s tpm2.Session) ([]byte, error) {
		rsp, err := (tpm2.NVRead{AuthHandle: tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: s}, NVIndex: x.named(), Size: extendSize}).Execute(t)
		if err != nil {
			var rc tpm2.TPMRC
			if errors.As(err, &rc) {
				return nil, nvWrap("TPM2_NV_Read", guarded("TPM2_NV_Read", err, 1))
			}
			return nil, Wrap("TPM2_NV_Read", err)
		}
		if len(rsp.Data.Buffer) != extendSize {
			return nil, fmt.Errorf("TPM2_NV_Read: %d bytes returned, %d asked", len(rsp.Data.Buffer), extendSize)
		}
		return rsp.Data.Buffer, nil
	}
	// In an operation's Share, the shared session reads (its audit role
	// authorizes x's empty password, as in WithAuthenticatedNV) and then
	// proves the gate, kept over the policy session's start (gateSession):
	// the keyed session below, its StartAuthSession and its flush, is
	// not needed (issue 14: 2 commands in the daemon's records).
	if ok, err := t.withSharedRead(func(s tpm2.Session) (err error) {
		value, err = read(s)
		return err
	}); ok {
		if err != nil {
			return nil, nil, err
		}
		ge, err := t.PrepareGatedExtendOf(x, gate, data)
		if err != nil {
			return nil, nil, err
		}
		return value, ge, nil
	}
	srk, err := t.SRK()
	if err != nil {
		return nil, nil, err
	}
	// provd's keyed HMAC session: authorizing x's read, its HMAC key is the
	// session key alone (x's password is empty); authorizing the gate, the
	// session key and the gate's value (TPM 2.0 Part 1, 19.6.8), and a
	// refusal there is told apart as in the shared session
	// (authorizeChecked: found by review, a forged warning before the
	// resend was a wrong value here too).
	k, err := t.startKeyedHMAC(srk)
	if err != nil {
		return nil, nil, err
	}
	s, closeS := hmacAuth{k: k}, t.keyedCloser(k)
	defer func() {
		if cerr := closeS(); cerr != nil {
			if ge != nil {
				cerr = errors.Join(cerr, ge.Close())
			}
			value, ge, err = nil, nil, errors.Join(err, cerr)
		}
	}()
	if value, err = read(s); err != nil {
		return nil, nil, err
	}
	gen, started := t.Generation(), time.Now()
	ps, _, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, policyNonceSize, salt...)
	if err != nil {
		return nil, nil, Wrap("TPM2_StartAuthSession", err)
	}
	pol := t.newGateSession(ps, gen, started)
	if err := t.proveGate(pol, k, gate, tpm2.TPMCCNVExtend, cpHash); err != nil {
		return nil, nil, errors.Join(err, t.spend(pol))
	}
	return value, &GatedExtend{t: t, x: x, params: params, s: pol}, nil
}

// Extend sends TPM2_NV_Extend (raw: go-tpm v0.9.8 lacks it) of the data
// the session was prepared for, authorized by the session. With the session
// salted (an SRK is pinned) the command and response HMACs are checked: a
// response the bus invented or changed, or a command it changed, is
// ErrResponseForged. A policy the index does not accept (another gate: the
// index was redefined) is ErrPolicyNotSatisfied.
func (g *GatedExtend) Extend() error {
	if g.s.closed {
		return errors.New("NV extend: the gate session is used up")
	}
	_, err := (rawCommand{cc: ccNVExtend, handles: []tpm2.TPMHandle{g.x.Handle, g.x.Handle},
		session: g.s.Session(), names: []tpm2.TPM2BName{g.x.Name, g.x.Name}, params: g.params}).run(g.t)
	if err != nil {
		if errors.Is(err, ErrResponseForged) {
			return fmt.Errorf("TPM2_NV_Extend: %w", err)
		}
		return notSatisfied("TPM2_NV_Extend", guarded("TPM2_NV_Extend", err, 1), tpm2.TPMRCPolicyFail)
	}
	g.done = true
	return nil
}

// Handle is the handle of the extend's policy session.
func (g *GatedExtend) Handle() tpm2.TPMHandle { return g.s.start }

// Done reports whether the TPM made the extend (an authenticated success).
func (g *GatedExtend) Done() bool { return g.done }

// Close flushes the session. Unless the extend succeeded it spends the
// proof (TPM.spend): when Close returns, nothing can make the prepared
// extend any more, so an extend that failed may be prepared and made again.
// A GatedExtend whose session went on to the next (PrepareGatedExtendAgain)
// has nothing to close.
//
// After the TPM's generation moved (a reset, a power cut, a lost
// connection, a migration) on a TPM provd has to itself, the session is
// not flushed by its number, which may be another session's slot now
// (found by review: a power cut after the proof, and the flush ended a
// live session in that slot; the TPM flushes by slot): it is forgotten
// and the sweep is asked for (TPM.ForgetsStale); a proof that may live on
// in it (a migrated TPM keeps its sessions) is spent as spend does, the
// session's absence confirmed or the proof waited out (up to the proof's
// lifetime, about 11 s, when the TPM still holds a session there).
func (g *GatedExtend) Close() error {
	if g.passed {
		return nil
	}
	if g.t.ForgetsStale(g.s.gen) {
		g.s.forget()
		g.t.unheld()
		if !g.done && !g.s.proofUntil.IsZero() && g.t.saltToPin() {
			g.t.proofGone(g.s)
		}
		return nil
	}
	if g.done {
		return g.s.Close()
	}
	return g.t.spend(g.s)
}

// NVExtendGated is PrepareGatedExtend, Extend and Close.
func (t *TPM) NVExtendGated(h tpm2.TPMHandle, data []byte, gate Gate) (err error) {
	g, err := t.PrepareGatedExtend(h, gate, data)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := g.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return g.Extend()
}

// LoadGate loads a gate key's blob under parent with a password session (one
// command, where Load spends three on a session salted to the SRK) and
// returns it with its authorization value auth. The blob crosses the bus in
// clear and anyone who records it can load it again; that gives nothing
// without auth, which only the state directory holds (a gate created before
// gates had one, auth empty, gives it: such gates are replaced). A response
// naming another object is refused here, and the TPM computes the policy
// digest from the name of what it loaded.
func (t *TPM) LoadGate(parent Object, b Blob, auth []byte) (Gate, error) {
	want, err := b.Name()
	if err != nil {
		return Gate{}, err
	}
	rsp, err := (tpm2.Load{ParentHandle: parent.Auth(tpm2.PasswordAuth(nil)), InPrivate: b.Private, InPublic: b.Public}).Execute(t)
	if err != nil {
		// An answer that does not parse may follow a load the TPM made
		// (found by review: the gate stayed loaded, held by nobody).
		t.unheld()
		return Gate{}, Wrap("TPM2_Load", err)
	}
	pub, err := b.Public.Contents()
	if err != nil {
		return Gate{}, errors.Join(err, t.Flush(rsp.ObjectHandle))
	}
	if !nameEqual(rsp.Name, want) {
		return Gate{}, errors.Join(fmt.Errorf("%w: TPM2_Load of a gate returned name %x, the blob's is %x", ErrResponseForged, rsp.Name.Buffer, want.Buffer), t.Flush(rsp.ObjectHandle))
	}
	return Gate{Object: Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub}, auth: auth}, nil
}

// GateOf is a gate already loaded (obj) with its authorization value: for
// tests and tools that load gates themselves.
func GateOf(obj Object, auth []byte) Gate { return Gate{Object: obj, auth: auth} }
