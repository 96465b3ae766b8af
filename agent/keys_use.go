package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// keyState is what one key operation reads from the state in one view.
type keyState struct {
	pk      pkInputs
	exists  bool
	rec     keyRecord
	keyBlob []byte // created keys
	// kept says it came from the agent's keyStates, not from this
	// operation's read: good for a key the TPM holds, never for a load
	// (keyObject: errReadForLoad).
	kept bool
	// use is the key's policy as its record describes it, checked to be
	// the policy the record names (usePolicy), for a key use.
	use policy.Policy
}

// usePolicy is the policy of ks's key as its record describes it (its
// kind, extractability, usage and duplication rule), refused as tampered
// when that is not the policy the record names (and the TPM holds the key
// to): review 72, a key imported without --extractable relabelled
// "created" was sent the policy of a created key and refused by the TPM
// as a policy failure, which told the operator to look at the PCRs.
func (ks keyState) usePolicy() (policy.Policy, error) {
	rule, err := ks.rec.rule()
	if err != nil {
		return nil, err
	}
	expr, err := ks.rec.policyUnder(ks.pk, rule, nil)
	if err != nil || ks.rec.Kind == api.KindKEK {
		// A KEK's record names no policy: a key use refuses it as a KEK
		// when it comes to load it (keyObject: errKEKOnly; review 75:
		// checked here first, a KEK named for a sign was "tampered").
		return expr, err
	}
	d, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if hex.EncodeToString(d) != ks.rec.Policy {
		return nil, fmt.Errorf("%w: key %q: its record (kind %q, extractable %v) does not describe the policy it names", api.ErrTampered, ks.rec.Name, ks.rec.Kind, ks.rec.Extractable)
	}
	return expr, nil
}

// errReadForLoad: a key use must load its key (or the PK) from blobs, and
// its state is kept from an earlier read (keyStates); the use reads the
// state again, so that every blob sent to the TPM is read and checked in
// the operation that sends it.
var errReadForLoad = errors.New("agent: the key is loaded from the state read again")

// objectAuth is the key's authValue: its own (an extractable key's, which
// travels with it to a peer without the PK's), or the objects' under the PK.
func (ks keyState) objectAuth() ([]byte, error) {
	if ks.rec.Auth == "" {
		return ks.pk.auth, nil
	}
	auth, err := hex.DecodeString(ks.rec.Auth)
	if err != nil || len(auth) != objectAuthSize {
		return nil, fmt.Errorf("%w: key %q: its authorization value in the state is not %d bytes of hex", api.ErrTampered, ks.rec.Name, objectAuthSize)
	}
	return auth, nil
}

// readKeyState reads the PK's inputs and key name's record and blob. With
// must, a missing key is api.ErrNotFound.
func (a *Agent) readKeyState(ctx context.Context, name string, must bool) (keyState, error) {
	var ks keyState
	err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		ks, err = a.keyStateIn(tx, name, must)
		return err
	})
	return ks, err
}

// useKeyState is readKeyState(ctx, name, true) for a key use, from the
// agent's keyStates when the state read is the one they were read from
// (unless fresh): the manifest is read under the store's lock as by every
// transaction, and only what was parsed from it is kept (keyStates). What
// it returns is shared with the cache: read it, never change it.
func (a *Agent) useKeyState(ctx context.Context, name string, fresh bool) (keyState, error) {
	var ks keyState
	err := a.st.View(ctx, func(tx *store.Tx) error {
		v := tx.Version()
		var ok bool
		if ks, ok = a.states.get(v, name); ok && !fresh {
			ks.kept = true
			return nil
		}
		var err error
		if ks, err = a.keyStateIn(tx, name, true); err != nil {
			return err
		}
		if ks.use, err = ks.usePolicy(); err != nil {
			return err
		}
		a.states.put(v, name, ks)
		return nil
	})
	return ks, err
}

// keyStateIn is readKeyState in tx.
func (a *Agent) keyStateIn(tx *store.Tx, name string, must bool) (keyState, error) {
	var ks keyState
	var err error
	if ks.pk, err = a.readPKInputs(tx); err != nil {
		return ks, err
	}
	err = tx.Get(keyRecName(name), &ks.rec)
	if errors.Is(err, store.ErrNotFound) {
		if must {
			return ks, fmt.Errorf("%w: key %q (provd key list)", api.ErrNotFound, name)
		}
		return ks, nil
	}
	if err != nil {
		return ks, err
	}
	ks.exists = true
	if ks.rec.Kind != api.KindDerived {
		if ks.keyBlob, err = tx.ReadBlob(keyRecName(name)); err != nil {
			return ks, err
		}
	}
	if ks.rec.PK != ks.pk.state.Name {
		return ks, fmt.Errorf("%w: key %q belongs to another provisioning key (%.16s…); provision replaced it", api.ErrNotFound, name, ks.rec.PK)
	}
	return ks, nil
}

// deriveObject derives ks.rec's key under D: load the PK, load D through
// the PK's policy, CreateLoaded through D's: the officer's approval of this
// recipe (the PK's policy, then PolicyTemplate of exactly this template).
// The caller owns the returned object; on error nothing stays loaded.
func (a *Agent) deriveObject(ctx context.Context, ks keyState) (tpm.Object, error) {
	if ks.pk.state.DName == "" {
		if ks.pk.officer == nil {
			return tpm.Object{}, errNoOfficer("a derived key")
		}
		return tpm.Object{}, &api.PolicyError{Reason: "no derivation parent yet: it is created when the first signed policy is installed (provd policy install)", Err: policy.ErrNoSignedPolicy}
	}
	if ks.rec.Approval == nil {
		return tpm.Object{}, fmt.Errorf("%w: key %q has no officer approval in the state", api.ErrTampered, ks.rec.Name)
	}
	pkDigest := ks.pk.state.Policy.digest()
	r, kt, _, err := ks.rec.derivedRecipe(pkDigest, ks.pk.state.movable())
	if err != nil {
		return tpm.Object{}, err
	}
	tmpl := officer.DerivedTemplate(kt, r, pkDigest)
	approved, err := officer.DeriveApprovedExpr(ks.pk.expr, kt, r, pkDigest)
	if err != nil {
		return tpm.Object{}, err
	}
	opts := ks.pk.opts
	opts.Approved = []policy.Approved{{Policy: approved, Approval: ks.rec.Approval}}
	var obj tpm.Object
	err = a.withLoadedPK(ks.pk, func(l *loadedPK) (err error) {
		d, err := a.loadD(ctx, l)
		if err != nil {
			return err
		}
		defer a.flush(&err, d.Handle)
		if hex.EncodeToString(d.Name.Buffer) != ks.pk.state.DName {
			return fmt.Errorf("%w: derivation parent blob does not match the state", api.ErrTampered)
		}
		return a.withPolicySession(l.rec, officer.DerivePolicy(ks.pk.officer), opts, l.auth, func(s tpm2.Session) (err error) {
			obj, err = a.t.CreateLoaded(d, s, tmpl, tpm.Sensitive{UserAuth: l.auth})
			return err
		})
	})
	if err == nil && ks.rec.Object != "" && hex.EncodeToString(obj.Name.Buffer) != ks.rec.Object {
		err = fmt.Errorf("%w: key %q derives to another key than recorded (state copied from another device, or the template was edited)", api.ErrTampered, ks.rec.Name)
	}
	return a.loadedOrFlush(obj, err)
}

// loadCreated loads a created key's blob under the PK (through its policy).
// The caller owns the returned object; on error nothing stays loaded.
func (a *Agent) loadCreated(ks keyState) (tpm.Object, error) {
	blob, err := tpm.UnmarshalBlob(ks.keyBlob)
	if err != nil {
		return tpm.Object{}, fmt.Errorf("key %s blob: %w", ks.rec.Name, err)
	}
	var obj tpm.Object
	err = a.withLoadedPK(ks.pk, func(l *loadedPK) (err error) {
		obj, err = a.loadUnderPK(l, blob)
		return err
	})
	if err == nil && hex.EncodeToString(obj.Name.Buffer) != ks.rec.Object {
		err = fmt.Errorf("%w: key %q blob is not the recorded key", api.ErrTampered, ks.rec.Name)
	}
	return a.loadedOrFlush(obj, err)
}

// keyObject returns key ks.rec loaded (resident in the cache): resident
// already, from its saved context, or loaded/derived again. fromCache says
// whether a cached handle was used (a stale one is retried once).
func (a *Agent) keyObject(ctx context.Context, ks keyState) (obj tpm.Object, fromCache bool, err error) {
	name := ks.rec.Name
	if obj, ok, err := a.keys.Get(name, ks.rec.cacheID()); err != nil || ok {
		return obj, ok, err
	}
	if ks.kept {
		return obj, false, errReadForLoad
	}
	if err := a.keys.EvictResident(); err != nil {
		return obj, false, err
	}
	switch ks.rec.Kind {
	case api.KindDerived:
		obj, err = a.deriveObject(ctx, ks)
	case api.KindCreated, api.KindImported:
		obj, err = a.loadCreated(ks)
	case api.KindTransferred:
		obj, err = a.loadTransferred(ctx, ks)
	case api.KindKEK:
		err = errKEKOnly(name)
	default:
		err = fmt.Errorf("key %q: unknown kind %q in state", name, ks.rec.Kind)
	}
	if err != nil {
		return obj, false, err
	}
	a.keys.Put(name, ks.rec.cacheID(), obj)
	return obj, false, nil
}

// useKey runs fn with key name loaded and a policy session that satisfies
// its policy, for exactly one command. The policy is the PK's, so a platform
// that no longer satisfies it gets a *api.PolicyError (ErrPolicyNotSatisfied),
// cached key or not.
func (a *Agent) useKey(ctx context.Context, name string, fn func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error) error {
	if err := checkKeyName(name); err != nil {
		return err
	}
	ks, err := a.useKeyState(ctx, name, false)
	if err != nil {
		return err
	}
	ran, err := a.useKeyIn(ctx, ks, false, fn)
	if errors.Is(err, errReadForLoad) {
		// Returned before anything was sent for the load. When the
		// command already ran on a stale cached handle, this is
		// useKeyIn's one retry after a command, made from the state read
		// again: the key is loaded in it, so it is not retried again.
		if ks, err = a.useKeyState(ctx, name, true); err != nil {
			return err
		}
		_, err = a.useKeyIn(ctx, ks, ran, fn)
	}
	return err
}

// useKeyIn is useKey with the key's state read; ranBefore: the use's
// command ran already (a stale cached handle's, before the state was read
// again), so a refusal is not answered by running it once more (found by
// review 82: three runs of one command). sent reports whether the command
// ran here.
func (a *Agent) useKeyIn(ctx context.Context, ks keyState, ranBefore bool, fn func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error) (sent bool, _ error) {
	name := ks.rec.Name
	expr := ks.use
	opts := ks.pk.opts
	if ks.rec.Extractable {
		opts.Branches = []int{0} // the usage branch
	}
	var refused error // the refusal a load once more answers (refusedFresh)
	for attempt := 0; ; attempt++ {
		obj, cached, err := a.keyObject(ctx, ks)
		if attempt == 0 && a.makeRoom(err) {
			continue
		}
		if err != nil && refused != nil && errors.Is(err, tpm.ErrNoMemory) {
			// Loading once more after a refusal at the handle, no room:
			// the slots the refused loads took are held by nobody, A1's
			// doing (an honest loss frees them): the refusal stands,
			// forged (found by review 82: exit 10).
			return sent, refused
		}
		if err != nil {
			return sent, err
		}
		if hex.EncodeToString(obj.Public.AuthPolicy.Buffer) != ks.rec.Policy {
			return sent, fmt.Errorf("%w: key %q has another policy than recorded", api.ErrTampered, name)
		}
		auth, err := ks.objectAuth()
		if err != nil {
			return sent, err
		}
		ran := false
		err = a.withPolicySession(ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
			ran = true
			return fn(ks.rec, obj, s)
		})
		sent = sent || ran
		if !ran && attempt == 0 && a.makeRoom(err) {
			continue
		}
		if ran && cached && attempt == 0 && staleHandle(err) {
			// The cached handle is gone (TPM reset, flushed by someone
			// else), or names another object now, whose authorization
			// ours fails or which cannot be authorized at all (found by
			// review: an object with the key's policy and another
			// authValue, or the key's public area loaded alone, at the
			// number; every later use failed there, the first counting
			// toward lockout, until restart): flushed (on a TPM provd
			// talks to alone whatever sits there is a leak or a plant;
			// on a resource manager the handle is provd's own, and
			// dropping it without a flush leaked its slot when the
			// failure was forged) and the key loaded again. provd's own
			// objects are noDA, so the retry cannot count.
			if handleRefused(err) {
				// Nothing there to flush, says the TPM's answer, which
				// has no HMAC: if it was forged, the key stays loaded
				// and the sweep flushes it (found by review).
				a.keys.Forget(name)
				a.t.Unheld()
			} else if err := a.keys.Drop(name); err != nil {
				return sent, err
			}
			continue
		}
		if ran && !cached {
			retry, ferr := a.refusedFresh(name, ranBefore || attempt > 0, err)
			if retry {
				refused = ferr
				continue
			}
			if ferr != nil {
				return sent, ferr
			}
		}
		return sent, err
	}
}

// refusedFresh decides a use of key name, loaded just now, that the TPM
// refused at the command (err), again when the use's command ran before:
// whether to load the key and use it once more (then the error is what the
// refusal stands as if that fails for want of room), and the error to
// return (nil: err as it is, or no such refusal). The load's answer names
// the handle without an HMAC (its name has one), so A1 can rename it to an
// object of its own, or to a handle that holds none (found by reviews 79
// and 80). Whatever the
// refusal, the handle is forgotten, not flushed (another's object may sit
// there), and the sweep flushes what provd does not hold, the key the TPM
// loaded among them:
//   - no object at the handle (TPM_RC_REFERENCE_H0, TPM_RC_HANDLE, or
//     TPM_RC_VALUE for it): the TPM made no such handle, or lost it since
//     (a power cut, or a suspend and resume on a device without a resource
//     manager, which provd need not see: found by review 81). The key is
//     loaded and used once more; refused so again, it is forged;
//   - TPM_RC_POLICY_FAIL after every step of the policy its record names
//     passed (checked before the use: the key's authPolicy is the
//     record's): another object at the handle, or a step changed on the
//     bus; forged, exit 15, not a platform that fails the policy. No TPM
//     start, real or forged, excuses it (review 81: a forged
//     TPM_RC_INITIALIZE and start-up answer, neither with an HMAC, did);
//   - the command's HMAC refused (TPM_RC_BAD_AUTH): A1's object with the
//     key's policy (a public digest), or the key's value edited in the
//     state, which nothing here tells apart: the TPM's word, exit 11.
func (a *Agent) refusedFresh(name string, again bool, err error) (retry bool, _ error) {
	var pe *api.PolicyError
	gone := handleRefused(err)
	forged := gone || errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.As(err, &pe)
	if errors.Is(err, tpm.ErrResponseForged) || !forged && !errors.Is(err, tpm.ErrBadAuth) {
		return false, nil
	}
	a.keys.Forget(name)
	a.t.Unheld()
	if !forged {
		return false, nil
	}
	ferr := fmt.Errorf("%w: the TPM refused the use of key %q at the handle its load's answer named, after every step of its policy passed: that answer or a step was changed on the bus (%v)", tpm.ErrResponseForged, name, err)
	return gone && !again, ferr
}

// handleRefused reports whether the TPM refused a command's first handle
// as holding no object: not found, or a handle it never makes
// (TPM_RC_VALUE or TPM_RC_HANDLE for handle 1; found by review 80: such a
// cached handle was kept, and every later use failed until restart).
func handleRefused(err error) bool {
	if errors.Is(err, tpm.ErrNotFound) {
		return true
	}
	var f1 tpm2.TPMFmt1Error
	if errors.As(err, &f1) && (errors.Is(err, tpm2.TPMRCValue) || errors.Is(err, tpm2.TPMRCHandle)) {
		ok, i := f1.Handle()
		return ok && i == 1
	}
	return false
}

// makeRoom answers a key use that ran out of TPM slots before its command
// (loading, or starting a session salted to the SRK, which the TPM loads
// into a slot while it starts): when cached keys hold slots, they are
// evicted (their contexts kept) and the use is made once more (found on
// swtpm with two keys resident and another client's object loaded). The
// command itself is never run twice: only failures before it come here.
func (a *Agent) makeRoom(err error) bool {
	if !errors.Is(err, tpm.ErrNoMemory) || a.keys.Resident() == 0 {
		return false
	}
	return a.keys.EvictResident() == nil
}

// staleHandle reports whether err, from a command on a cached key's handle,
// says the handle does not hold that key (any more): not loaded, another
// object's authorization, or an object that cannot be authorized.
func staleHandle(err error) bool {
	return handleRefused(err) || errors.Is(err, tpm.ErrBadAuth) ||
		errors.Is(err, tpm2.TPMRCAuthUnavailable) || errors.Is(err, tpm2.TPMRCKey) || errors.Is(err, tpm2.TPMRCHandle)
}

func wantUsage(rec keyRecord, usages ...string) error {
	for _, u := range usages {
		if rec.Usage == u {
			return nil
		}
	}
	return fmt.Errorf("%w: key %q is of type %s, for %s, not %s", api.ErrNotPermitted, rec.Name, rec.Type, rec.Usage, usages[0])
}

// approvedHash maps an approved hash to the TPM's algorithm
// (catalog.TPMHash); any other is not permitted (exit 5).
func approvedHash(h crypto.Hash) (tpm2.TPMIAlgHash, error) {
	alg, err := catalog.TPMHash(h)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", api.ErrNotPermitted, err)
	}
	return alg, nil
}

// Sign signs digest (the hash of the message under opts.Hash) with key name
// inside the TPM. ECDSA signatures are ASN.1 DER (what openssl and
// ecdsa.VerifyASN1 take); RSA signatures are the raw signature octets. The
// signature is verified on the host against the recorded public key before it
// is returned.
func (a *Agent) Sign(ctx context.Context, name string, digest []byte, opts api.SignOptions) ([]byte, error) {
	finish, err := a.SignDeferred(ctx, name, digest, opts)
	if err != nil {
		return nil, err
	}
	return finish()
}

// SignDeferred is Sign's part in the TPM: finish gives the signature, once
// it has encoded it and checked it against the key's public area, and only
// then. That part is the host's alone, so finish runs once the agent is
// released and the TPM serves the next request meanwhile: the daemon runs
// it after the request leaves its queue (issue 14: a tenth of a warm
// sign's time in the daemon, and all of it in the queue's turn when Sign
// ran it there).
func (a *Agent) SignDeferred(ctx context.Context, name string, digest []byte, opts api.SignOptions) (finish func() ([]byte, error), err error) {
	defer a.lockKeep()()
	err = a.useKey(ctx, name, func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error {
		if err := wantUsage(rec, catalog.UsageSign); err != nil {
			return err
		}
		kt, err := lookupType(rec.Type, rec.Kind == api.KindDerived)
		if err != nil {
			return err
		}
		if kt.Alg != tpm2.TPMAlgECC && kt.Alg != tpm2.TPMAlgRSA {
			return fmt.Errorf("%w: %s keys do not sign (use key hmac)", api.ErrNotPermitted, rec.Type)
		}
		finish, err = a.signDigest(name, obj, auth, kt.Alg, kt.Hash, digest, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	return finish, nil
}

// signDigest signs digest with a loaded signing key of algorithm keyAlg
// (its default hash defHash) in the TPM, authorized by auth. finish gives
// the signature (ECDSA as ASN.1 DER, RSA as the raw signature) once it has
// checked it against the key's public area, and never before: what it does
// is the host's alone, so a caller under the agent's lock runs it after
// (SignDeferred).
func (a *Agent) signDigest(name string, obj tpm.Object, auth tpm2.Session, keyAlg tpm2.TPMAlgID, defHash crypto.Hash, digest []byte, opts api.SignOptions) (finish func() ([]byte, error), err error) {
	h := opts.Hash
	if h == 0 {
		h = defHash
	}
	alg, err := approvedHash(h)
	if err != nil {
		return nil, err
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("%w: digest of %d bytes for %v (want %d)", api.ErrBadInput, len(digest), h, h.Size())
	}
	scheme := opts.Scheme
	var sch tpm2.TPMTSigScheme
	switch keyAlg {
	case tpm2.TPMAlgECC:
		if scheme == "" {
			scheme = api.SchemeECDSA
		}
		if scheme != api.SchemeECDSA {
			return nil, fmt.Errorf("%w: scheme %q for an ECC key (approved: ecdsa)", api.ErrNotPermitted, scheme)
		}
		sch = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg})}
	case tpm2.TPMAlgRSA:
		switch scheme {
		case "", api.SchemeRSASSA:
			scheme = api.SchemeRSASSA
			sch = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSchemeHash{HashAlg: alg})}
		case api.SchemeRSAPSS:
			sch = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgRSAPSS, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSchemeHash{HashAlg: alg})}
		default:
			return nil, fmt.Errorf("%w: scheme %q for an RSA key (approved: rsassa, rsapss)", api.ErrNotPermitted, scheme)
		}
	default:
		return nil, fmt.Errorf("%w: this key does not sign", api.ErrNotPermitted)
	}
	sig, err := a.t.Sign(obj, auth, digest, sch)
	if err != nil {
		return nil, err
	}
	// The public area is the loaded object's, copied: the key's public key
	// is made from it in finish, after the agent is released.
	public := obj.Public
	bad := fmt.Errorf("TPM2_Sign: the signature does not verify under key %q's public key", name)
	var check func(pub crypto.PublicKey) ([]byte, error)
	switch scheme {
	case api.SchemeECDSA:
		e, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, err
		}
		check = func(pub crypto.PublicKey) ([]byte, error) {
			out, err := asn1.Marshal(struct{ R, S *big.Int }{
				new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)})
			if err != nil {
				return nil, err
			}
			if k, ok := pub.(*ecdsa.PublicKey); !ok || !ecdsa.VerifyASN1(k, digest, out) {
				return nil, bad
			}
			return out, nil
		}
	case api.SchemeRSASSA:
		r, err := sig.Signature.RSASSA()
		if err != nil {
			return nil, err
		}
		check = func(pub crypto.PublicKey) ([]byte, error) {
			if k, ok := pub.(*rsa.PublicKey); !ok || rsa.VerifyPKCS1v15(k, h, digest, r.Sig.Buffer) != nil {
				return nil, bad
			}
			return r.Sig.Buffer, nil
		}
	case api.SchemeRSAPSS:
		r, err := sig.Signature.RSAPSS()
		if err != nil {
			return nil, err
		}
		check = func(pub crypto.PublicKey) ([]byte, error) {
			if k, ok := pub.(*rsa.PublicKey); !ok || rsa.VerifyPSS(k, h, digest, r.Sig.Buffer, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) != nil {
				return nil, bad
			}
			return r.Sig.Buffer, nil
		}
	}
	if check == nil {
		return nil, fmt.Errorf("sign: no check for scheme %q", scheme)
	}
	return func() ([]byte, error) {
		pub, err := publicKey(public)
		if err != nil {
			return nil, err
		}
		return check(pub)
	}, nil
}

// MaxDataInput bounds what hmac, encrypt and decrypt take (64 MiB).
const MaxDataInput = 64 << 20

// HMAC returns HMAC-SHA-256 of data under key name, computed in the TPM.
func (a *Agent) HMAC(ctx context.Context, name string, data []byte) ([]byte, error) {
	defer a.lockKeep()()
	if len(data) > MaxDataInput {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", api.ErrBadInput, len(data), MaxDataInput)
	}
	var out []byte
	err := a.useKey(ctx, name, func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error {
		if err := wantUsage(rec, catalog.UsageHMAC); err != nil {
			return err
		}
		if len(data) > tpm.MaxBuffer {
			// An HMAC sequence takes a slot, and its salted sessions
			// another while they start: only this key stays loaded.
			if err := a.keys.Trim(1); err != nil {
				return err
			}
		}
		var err error
		out, err = a.t.HMAC(obj, auth, tpm2.TPMAlgSHA256, data)
		return err
	})
	return out, err
}

// ECDH returns the ECDH shared secret (the X coordinate, the size of the
// curve's field) of key name and peer. The caller clears it.
func (a *Agent) ECDH(ctx context.Context, name string, peer *ecdh.PublicKey) ([]byte, error) {
	defer a.lockKeep()()
	var out []byte
	err := a.useKey(ctx, name, func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error {
		if err := wantUsage(rec, catalog.UsageECDH); err != nil {
			return err
		}
		kt, err := lookupType(rec.Type, rec.Kind == api.KindDerived)
		if err != nil {
			return err
		}
		want := ecdh.P256()
		if kt.Curve == tpm2.TPMECCNistP384 {
			want = ecdh.P384()
		}
		if peer == nil || peer.Curve() != want {
			return fmt.Errorf("%w: the peer's key is not on the key's curve (%s)", api.ErrBadInput, rec.Type)
		}
		raw := peer.Bytes() // 04 || X || Y
		size := (len(raw) - 1) / 2
		z, err := a.t.ECDHZGen(obj, auth, tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1 : 1+size]},
			Y: tpm2.TPM2BECCParameter{Buffer: raw[1+size:]},
		})
		if err != nil {
			return err
		}
		defer clear(z)
		if len(z) > size {
			return fmt.Errorf("TPM2_ECDH_ZGen: %d-byte coordinate", len(z))
		}
		out = make([]byte, size)
		copy(out[size-len(z):], z)
		return nil
	})
	return out, err
}

// Decrypt decrypts an RSA-OAEP ciphertext (hash h, empty label) with key
// name in the TPM. The caller clears the result.
func (a *Agent) Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error) {
	defer a.lockKeep()()
	if h == 0 {
		h = crypto.SHA256
	}
	alg, err := approvedHash(h)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = a.useKey(ctx, name, func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error {
		if err := wantUsage(rec, catalog.UsageDecrypt); err != nil {
			return err
		}
		if obj.Public.Type != tpm2.TPMAlgRSA {
			return fmt.Errorf("%w: key %q is of type %s: RSA-OAEP needs an RSA key (an AES key decrypts envelopes: DecryptData)", api.ErrBadInput, name, rec.Type)
		}
		// The TPM takes a ciphertext of exactly the modulus' size; anything
		// else is refused here, before a byte is sent (found by review: 100 KB
		// broke the transport for every caller).
		if rp, err := obj.Public.Parameters.RSADetail(); err == nil && len(ciphertext) != int(rp.KeyBits)/8 {
			return fmt.Errorf("%w: an RSA-OAEP ciphertext for a %d-bit key is %d bytes, not %d", api.ErrBadInput, rp.KeyBits, rp.KeyBits/8, len(ciphertext))
		}
		var err error
		out, err = a.t.RSADecryptOAEP(obj, auth, alg, ciphertext)
		return err
	})
	return out, err
}

// AES envelope (docs/formats.md, "AES envelopes"): the data is encrypted on
// the host with AES-256-GCM under a fresh 32-byte data key; the data key is
// encrypted by the TPM's AES-256 key in CFB mode with a random IV
// (TPM2_EncryptDecrypt2). Layout:
//
//	magic "PROVDAE1" | iv (16) | wrapped data key (32) | nonce (12) | ciphertext+tag
//
// AAD: magic | the key's TPM name | iv | wrapped key | nonce.
const aesMagic = "PROVDAE1"

const aesHeader = len(aesMagic) + 16 + 32 + 12

// EncryptData encrypts plain under AES key name (envelope above): one TPM
// use per call, whatever the size.
func (a *Agent) EncryptData(ctx context.Context, name string, plain []byte) ([]byte, error) {
	defer a.lockKeep()()
	if len(plain) > MaxDataInput {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", api.ErrBadInput, len(plain), MaxDataInput)
	}
	var out []byte
	err := a.useKey(ctx, name, func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error {
		if obj.Public.Type != tpm2.TPMAlgSymCipher {
			return fmt.Errorf("%w: key %q is of type %s, not aes-256", api.ErrNotPermitted, name, rec.Type)
		}
		dek := make([]byte, 32)
		defer clear(dek)
		hdr := make([]byte, aesHeader)
		copy(hdr, aesMagic)
		iv, nonce := hdr[8:24], hdr[56:68]
		if _, err := rand.Read(dek); err != nil {
			return err
		}
		if _, err := rand.Read(iv); err != nil {
			return err
		}
		if _, err := rand.Read(nonce); err != nil {
			return err
		}
		wrapped, err := a.t.SymCrypt(obj, auth, false, tpm2.TPMAlgCFB, iv, dek)
		if err != nil {
			return err
		}
		if len(wrapped) != 32 {
			return fmt.Errorf("TPM2_EncryptDecrypt2: %d bytes back", len(wrapped))
		}
		copy(hdr[24:56], wrapped)
		gcm, err := newGCM(dek)
		if err != nil {
			return err
		}
		out = gcm.Seal(hdr, nonce, plain, aesAAD(hdr, obj.Name.Buffer))
		return nil
	})
	return out, err
}

func aesAAD(hdr, keyName []byte) []byte {
	aad := append([]byte(aesMagic), keyName...)
	return append(aad, hdr[8:aesHeader]...)
}

// DecryptData opens an AES envelope made by EncryptData with key name. A
// modified envelope, or one for another key, is api.ErrTampered.
func (a *Agent) DecryptData(ctx context.Context, name string, env []byte) ([]byte, error) {
	defer a.lockKeep()()
	// The key first: an ECC key given here is the wrong key, whatever the
	// input is (found by review: it was called "not a provd AES envelope").
	rec, err := a.keyRecord(ctx, name)
	if err != nil {
		return nil, err
	}
	if rec.Type != "aes-256" {
		return nil, fmt.Errorf("%w: key %q is of type %s: envelopes are decrypted with an aes-256 key (and RSA-OAEP ciphertexts with an RSA decrypt key)", api.ErrNotPermitted, name, rec.Type)
	}
	if len(env) < aesHeader+16 || string(env[:8]) != aesMagic {
		return nil, fmt.Errorf("%w: not a provd AES envelope", api.ErrBadInput)
	}
	var out []byte
	err = a.useKey(ctx, name, func(rec keyRecord, obj tpm.Object, auth tpm2.Session) error {
		if obj.Public.Type != tpm2.TPMAlgSymCipher {
			return fmt.Errorf("%w: key %q is of type %s, not aes-256", api.ErrNotPermitted, name, rec.Type)
		}
		dek, err := a.t.SymCrypt(obj, auth, true, tpm2.TPMAlgCFB, env[8:24], env[24:56])
		if err != nil {
			return err
		}
		defer clear(dek)
		gcm, err := newGCM(dek)
		if err != nil {
			return err
		}
		out, err = gcm.Open(nil, env[56:68], env[aesHeader:], aesAAD(env, obj.Name.Buffer))
		if err != nil {
			return fmt.Errorf("%w: AES envelope fails authentication (modified, or made with another key)", api.ErrTampered)
		}
		return nil
	})
	return out, err
}

// withDupBranch runs fn with key ks loaded and a policy session that
// satisfies its duplication branch toward the parent named newParent, for
// one command (TPM2_Duplicate). The branch is the key's rule (dupRule): its
// bound peer, or the approval of that destination by the officer or the
// key's authority, checked here for a clear refusal before the TPM checks
// it again (hint names the approve flag to ask for). The loaded key's type
// and policy must be its record's: a record edited to make the key look
// weaker is refused as tampered (found by review: a P-384 key relabelled
// ecc-p256 went under an AES-128 KEK).
func (a *Agent) withDupBranch(ctx context.Context, ks keyState, newParent []byte, approval *policy.Approval, hint string, fn func(obj tpm.Object, s tpm2.Session) error) error {
	rule, err := ks.rec.rule()
	if err != nil {
		return err
	}
	objName, err := hex.DecodeString(ks.rec.Object)
	if err != nil {
		return fmt.Errorf("%w: key %q's object name", api.ErrTampered, ks.rec.Name)
	}
	if !ks.rec.Extractable {
		return fmt.Errorf("%w: %q was born non-extractable", api.ErrNotPermitted, ks.rec.Name)
	}
	expr, err := ks.rec.policyUnder(ks.pk, rule, objName)
	if err != nil {
		return err
	}
	opts := ks.pk.opts
	opts.Branches = []int{1} // the duplication branch
	switch {
	case rule.To != nil:
		if !bytes.Equal(rule.To, newParent) {
			return fmt.Errorf("%w: %q was bound at birth to another parent", api.ErrNotPermitted, ks.rec.Name)
		}
	default:
		approver, who := ks.pk.officer, "crypto officer"
		if rule.By != nil {
			approver, who = rule.By, "duplication authority"
		}
		if approver == nil {
			return errNoOfficer("moving a key")
		}
		if approval == nil {
			return fmt.Errorf("%w: moving %q there needs the %s's approval (provd key approve %s --object-name %s)", api.ErrNotPermitted, ks.rec.Name, who, hint, ks.rec.Object)
		}
		if err := checkApproval(approval, approver, officer.DupApproved(ks.pk.state.Policy.digest(), objName, newParent), officer.DupRef); err != nil {
			return err
		}
		opts.Approved = []policy.Approved{{Policy: officer.DupApprovedExpr(ks.pk.expr, objName, newParent), Approval: approval}}
	}
	auth, err := ks.objectAuth()
	if err != nil {
		return err
	}
	obj, _, err := a.keyObject(ctx, ks)
	if err != nil {
		return err
	}
	if got, _, err := catalog.TypeOf(obj.Public); err != nil || got.Name != ks.rec.Type ||
		hex.EncodeToString(obj.Public.AuthPolicy.Buffer) != ks.rec.Policy {
		return fmt.Errorf("%w: key %q is not of the type or policy its record says", api.ErrTampered, ks.rec.Name)
	}
	// Every duplication branch ends in PolicyAuthValue (dupBranch): the
	// session can encrypt TPM2_Duplicate's inner wrapper key on its way
	// in, and the command needs no encryption session of its own.
	return a.withFreshSession(a.secretIn, ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
		return fn(obj, s)
	})
}
