package agent

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// The device's side of fleet attestation (docs/attestation.md): an
// attestation key (AK) under the SRK, proven to live with the EK by
// activating the endpoint's credential, and quotes with it. The agent does
// the TPM's part; provd attest enroll|now carry it to the endpoint (the
// daemon has no network).

// attestKeyRec names the AK's record and blob in the state.
const attestKeyRec = "attest_key"

type attestKeyRecord struct {
	Name      string    `json:"name"` // the AK's TPM name, hex
	Auth      string    `json:"auth"` // its authValue, hex (secret)
	CreatedAt time.Time `json:"created_at"`
}

// AttestIdentity returns what enrollment sends: the TPM's EK certificates
// and the AK's public area, the AK created once (under the SRK the state
// pins, with a random authValue kept in the state).
func (a *Agent) AttestIdentity(ctx context.Context) (fleetapi.EnrollRequest, error) {
	defer a.lock()()
	objects := map[string]string{}
	return auditedResult(ctx, a, "attest-identity", objects, func() (fleetapi.EnrollRequest, error) {
		pub, err := a.attestKey(ctx, objects)
		if err != nil {
			return fleetapi.EnrollRequest{}, err
		}
		certs, err := a.ekCertificates(ctx)
		if err != nil {
			return fleetapi.EnrollRequest{}, err
		}
		return fleetapi.EnrollRequest{EKCertificates: certs, AKPublic: tpm2.Marshal(pub)}, nil
	})
}

// attestKey returns the AK's public area, creating the AK when the state
// has none.
func (a *Agent) attestKey(ctx context.Context, objects map[string]string) (tpm2.TPMTPublic, error) {
	if err := a.requireIdentity(ctx); err != nil {
		return tpm2.TPMTPublic{}, err
	}
	_, blob, err := a.readAttestKey(ctx)
	if errors.Is(err, store.ErrNotFound) {
		blob, err = a.newAttestKey(ctx)
	}
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	pub, err := blob.Public.Contents()
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: the attestation key's blob", api.ErrTampered)
	}
	if name, err := blob.Name(); err == nil {
		objects["attestation_key"] = hex.EncodeToString(name.Buffer)
	}
	return *pub, nil
}

func (a *Agent) readAttestKey(ctx context.Context) (attestKeyRecord, tpm.Blob, error) {
	var rec attestKeyRecord
	var raw []byte
	err := a.st.View(ctx, func(tx *store.Tx) error {
		if err := tx.Get(attestKeyRec, &rec); err != nil {
			return err
		}
		var err error
		raw, err = tx.ReadBlob(attestKeyRec)
		return err
	})
	if err != nil {
		return rec, tpm.Blob{}, err
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return rec, tpm.Blob{}, fmt.Errorf("%w: the attestation key's blob: %v", api.ErrTampered, err)
	}
	if name, err := blob.Name(); err != nil || hex.EncodeToString(name.Buffer) != rec.Name {
		return rec, tpm.Blob{}, fmt.Errorf("%w: the attestation key's blob is not the recorded key", api.ErrTampered)
	}
	return rec, blob, nil
}

func (a *Agent) newAttestKey(ctx context.Context) (tpm.Blob, error) {
	auth, err := tpm.RandomAuth(objectAuthSize)
	if err != nil {
		return tpm.Blob{}, err
	}
	defer clear(auth)
	srk, err := a.srkForUse() // the AK lives under it: attestKey's state is provisioned
	if err != nil {
		return tpm.Blob{}, err
	}
	blob, err := a.t.Create(srk, nil, tpm.AKTemplate(), tpm.Sensitive{UserAuth: auth})
	if err != nil {
		return tpm.Blob{}, err
	}
	name, err := blob.Name()
	if err != nil {
		return tpm.Blob{}, err
	}
	rec := attestKeyRecord{Name: hex.EncodeToString(name.Buffer), Auth: hex.EncodeToString(auth), CreatedAt: a.now().UTC()}
	return blob, a.updatePinned(ctx, func(tx *store.Tx) error {
		if err := tx.WriteBlob(attestKeyRec, blob.Marshal()); err != nil {
			return err
		}
		return tx.Put(attestKeyRec, rec)
	})
}

// withAttestKey loads the AK and runs fn with it and its authValue.
func (a *Agent) withAttestKey(ctx context.Context, fn func(ak tpm.Object, auth []byte) error) error {
	if err := a.requireIdentity(ctx); err != nil {
		return err
	}
	rec, blob, err := a.readAttestKey(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: no attestation key: run provd attest enroll first", api.ErrNotFound)
	}
	if err != nil {
		return err
	}
	auth, err := hex.DecodeString(rec.Auth)
	if err != nil || len(auth) != objectAuthSize {
		return fmt.Errorf("%w: the attestation key's authorization value in the state", api.ErrTampered)
	}
	defer clear(auth)
	if err := a.keys.EvictResident(); err != nil {
		return err
	}
	// The AK lives under the SRK in a state that pins the TPM
	// (requireIdentity: provisioned, never a zeroized one): a missing SRK
	// is persisted again until the operation ends (unlock), as in a PK's
	// use, in a new process and behind a running daemon that cached it,
	// never a transient copy beside the AK, the EK and a delivered object
	// (found by reviews 31 and 37: a fourth object, TPM_RC_OBJECT_MEMORY).
	srk, err := a.srkForUse()
	if err != nil {
		return err
	}
	ak, err := a.t.Load(srk, nil, blob)
	if err != nil {
		return err
	}
	defer func() { _ = a.t.Flush(ak.Handle) }()
	if err := fn(ak, auth); err != nil {
		// The load's handle came in an answer with no HMAC: renamed on
		// the bus, the AK's uses fail, the flush above names another
		// handle, and the AK stays loaded; the sweep flushes it (found
		// by review).
		a.t.Unheld()
		return err
	}
	return nil
}

// AttestActivate activates the enrollment's credential with this TPM's EK
// (the certificate the endpoint named) and the AK: only this TPM, with this
// AK loaded by whoever holds its authValue, recovers the secret. The
// caller sends it back and clears it.
func (a *Agent) AttestActivate(ctx context.Context, e fleetapi.Enrollment) (api.AttestActivateResult, error) {
	secret, err := a.attestActivate(ctx, e)
	return api.AttestActivateResult{Secret: secret}, err
}

func (a *Agent) attestActivate(ctx context.Context, e fleetapi.Enrollment) ([]byte, error) {
	defer a.lock()()
	return auditedResult(ctx, a, "attest-activate", map[string]string{"device_id": e.DeviceID}, func() ([]byte, error) {
		if err := a.requireIdentity(ctx); err != nil {
			return nil, err
		}
		key, err := a.ekCertBySum(ctx, e.EKCertSHA256)
		if err != nil {
			return nil, err
		}
		ekHandle, ekPub, ekTmpl, _, err := ekPublic(key)
		if err != nil {
			return nil, err
		}
		var secret []byte
		err = a.withAttestKey(ctx, func(ak tpm.Object, auth []byte) error {
			opts := []tpm2.AuthOption{tpm2.Auth(auth)}
			if srk, err := a.t.SRK(); err == nil {
				opts = append(opts, tpm2.Salted(srk.Handle, srk.Public))
			}
			ek, flushEK, err := a.t.EK(ekHandle, ekPub, ekTmpl)
			if err != nil {
				return err
			}
			defer func() { _ = flushEK() }()
			secret, err = a.t.ActivateCredential(ak, tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...), ek, e.CredentialBlob, e.CredentialSecret)
			return err
		})
		return secret, err
	})
}

// AttestQuote quotes the PCRs pcrs names (bank name -> indices) with the
// AK over nonce, and reads their values in a session salted to the pinned
// SRK; it quotes and reads again when the values do not hash to the
// quote's digest (a PCR extended between the two), as the endpoint checks.
func (a *Agent) AttestQuote(ctx context.Context, req api.AttestQuoteRequest) (api.AttestQuoteResult, error) {
	q, sig, vals, err := a.attestQuote(ctx, req.Nonce, req.PCRs)
	return api.AttestQuoteResult{Quote: q, Signature: sig, PCRs: vals}, err
}

func (a *Agent) attestQuote(ctx context.Context, nonce []byte, pcrs map[string][]int) (quote, sig []byte, values map[string]map[string]string, err error) {
	// What the quote is checked against below (attest.VerifyQuote) is
	// checked here first: a caller's bad input is not the TPM's tampering.
	if len(nonce) < attest.MinNonceSize || len(nonce) > attest.MaxNonceSize {
		return nil, nil, nil, fmt.Errorf("%w: a nonce of %d bytes (want %d..%d)", api.ErrBadInput, len(nonce), attest.MinNonceSize, attest.MaxNonceSize)
	}
	if len(pcrs) == 0 {
		return nil, nil, nil, fmt.Errorf("%w: no PCR to quote", api.ErrBadInput)
	}
	var sel tpm2.TPMLPCRSelection
	banks := map[tpm2.TPMIAlgHash][]int{}
	for name, idx := range pcrs {
		b, err := policy.ParseBank(name)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %v", api.ErrBadInput, err)
		}
		if len(idx) == 0 {
			return nil, nil, nil, fmt.Errorf("%w: no PCR of bank %s to quote", api.ErrBadInput, name)
		}
		v := policy.PCRValues{Bank: b, Values: map[int][]byte{}}
		for _, i := range idx {
			if i < 0 || i > policy.MaxPCR {
				return nil, nil, nil, fmt.Errorf("%w: PCR %d", api.ErrBadInput, i)
			}
			v.Values[i] = make([]byte, b.Hash().Size())
		}
		sel.PCRSelections = append(sel.PCRSelections, v.Selection().PCRSelections...)
		banks[b.Alg()] = idx
	}
	defer a.lock()()
	// The AK's load, the PCRs' read and the quote share one session
	// (Share; the quote authorized in it by the AK's authValue), the read
	// before the quote (issue 14: 3 commands fewer than a session each).
	err = a.t.Share(func() error {
		return a.withAttestKey(ctx, func(ak tpm.Object, auth []byte) (err error) {
			quote, sig, values, err = a.readQuote(ak, auth, nonce, sel, banks)
			return err
		})
	})
	return quote, sig, values, err
}

// readQuote reads the PCRs banks names (in the operation's shared audit
// session), then quotes sel over nonce with ak; it reads and quotes again
// when the values do not hash to the quote's digest.
func (a *Agent) readQuote(ak tpm.Object, auth, nonce []byte, sel tpm2.TPMLPCRSelection, banks map[tpm2.TPMIAlgHash][]int) (quote, sig []byte, values map[string]map[string]string, err error) {
	for range 3 {
		read := attest.PCRValues{}
		for b, idx := range banks {
			if read[b], err = a.t.PCRReadAuthenticated(b, idx); err != nil {
				return nil, nil, nil, err
			}
		}
		if quote, sig, err = a.t.Quote(ak, auth, nonce, sel); err != nil {
			return nil, nil, nil, err
		}
		// The values sent are the quoted ones, checked here as the
		// endpoint will: a PCR extended between the read and the quote is
		// read and quoted again. (The PCR update counter, read before and
		// after, would take two commands more and not see PCRs 16 and 23
		// move.)
		q, err := attest.VerifyQuote(ak.Public, quote, sig, nonce, attest.Options{})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: the TPM's quote does not verify with its own AK: %v", api.ErrTampered, err)
		}
		switch err := q.CheckPCRs(read); {
		case errors.Is(err, attest.ErrPCRMismatch):
			continue
		case err != nil:
			return nil, nil, nil, fmt.Errorf("%w: the PCRs read do not fit the quote: %v", api.ErrTampered, err)
		}
		values = map[string]map[string]string{}
		for b, v := range read {
			m := map[string]string{}
			for i, d := range v {
				m[strconv.Itoa(i)] = hex.EncodeToString(d)
			}
			values[policy.Bank(b).String()] = m
		}
		return quote, sig, values, nil
	}
	return nil, nil, nil, errors.New("the PCRs kept changing while they were quoted")
}

// ekCertificates are the EK certificates in the TPM's NV (tpm.EKCertIndices),
// or, where NV holds none, the one first contact verified (given as a file
// at provision), which the state keeps.
func (a *Agent) ekCertificates(ctx context.Context) ([][]byte, error) {
	var certs [][]byte
	for _, c := range tpm.EKCertIndices {
		der, err := a.t.ReadNV(c.Handle)
		if errors.Is(err, tpm.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		certs = append(certs, der)
	}
	if len(certs) == 0 {
		if r, ok, err := a.readIdentity(ctx); err == nil && ok {
			switch ek, err := r.ekCert(); {
			case err != nil:
				return nil, err
			case ek != nil:
				return [][]byte{r.EKCert}, nil
			}
		}
		return nil, fmt.Errorf("%w: no EK certificate in NV: the TPM cannot be verified", api.ErrNotFound)
	}
	return certs, nil
}

// deliveryRec names a delivered secret's record and blob in the state.
func deliveryRec(name string) string { return "delivery-" + name }

type deliveryRecord struct {
	Name         string    `json:"name"`
	Kind         string    `json:"kind,omitempty"` // "secret" (also when empty) or "key"
	EKCertSHA256 string    `json:"ek_cert_sha256"`
	PCRs         []int     `json:"pcrs"` // SHA-256 PCRs it is bound to
	InstalledAt  time.Time `json:"installed_at"`
}

// AttestInstall imports secrets the fleet endpoint delivered: each a sealed
// data object in an outer wrapper to this TPM's EK, which TPM2_Import under
// the EK opens (a wrapper made to another TPM fails its integrity check).
// The blob the TPM returns (wrapped under the EK: no plaintext on disk) is
// kept in the state; AttestSecret unseals it while the PCRs hold the values
// of the appraisal that delivered it.
func (a *Agent) AttestInstall(ctx context.Context, req api.AttestInstallRequest) (api.AttestInstallResult, error) {
	defer a.lock()()
	objects := map[string]string{"deliveries": strconv.Itoa(len(req.Deliveries))}
	return auditedResult(ctx, a, "attest-install", objects, func() (api.AttestInstallResult, error) {
		var res api.AttestInstallResult
		if err := a.requireIdentity(ctx); err != nil {
			return res, err
		}
		if len(req.Deliveries) > maxDeliveries {
			return res, fmt.Errorf("%w: %d deliveries, at most %d", api.ErrBadInput, len(req.Deliveries), maxDeliveries)
		}
		for i, d := range req.Deliveries {
			if err := a.installDelivery(ctx, d); err != nil {
				// A state zeroized meanwhile takes no more of them.
				if ctx.Err() != nil || errors.Is(err, api.ErrNotProvisioned) {
					return res, err
				}
				if res.Failed == nil {
					res.Failed = map[string]string{}
				}
				// The name as the endpoint sent it, quoted and cut: no
				// control characters reach a terminal or a log, and no
				// megabyte of it the answer (found by review).
				res.Failed[fmt.Sprintf("#%d %s", i+1, strconv.Quote(cut(d.Name, 64)))] = strings.Map(func(r rune) rune {
					if unicode.IsControl(r) {
						return '?'
					}
					return r
				}, cut(err.Error(), 256))
				objects["failed"] = strconv.Itoa(len(res.Failed))
				continue
			}
			res.Installed = append(res.Installed, d.Name)
		}
		return res, nil
	})
}

// maxDeliveries bounds one install: a class's secrets and keys.
const maxDeliveries = 256

func (a *Agent) installDelivery(ctx context.Context, d fleetapi.Delivery) error {
	if err := fleetapi.CheckSecretName(d.Name); err != nil {
		return fmt.Errorf("%w: %v", api.ErrBadInput, err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](d.Public)
	if err != nil {
		return fmt.Errorf("%w: public area: %v", api.ErrBadInput, err)
	}
	kind, err := deliveryKind(*pub)
	if err != nil {
		return err
	}
	pcrs := d.PCRs["sha256"]
	if len(d.PCRs) != 1 || len(pcrs) == 0 {
		return fmt.Errorf("%w: a delivery bound to %v, want SHA-256 PCRs", api.ErrBadInput, d.PCRs)
	}
	for _, i := range pcrs {
		if i < 0 || i > policy.MaxPCR {
			return fmt.Errorf("%w: PCR %d", api.ErrBadInput, i)
		}
	}
	var blob tpm.Blob
	if err := a.withEK(ctx, d.EKCertSHA256, func(ek tpm.Object, auth tpm2.Session) (err error) {
		blob, err = a.t.ImportWrapped(ek, auth, *pub, d.Duplicate, d.Seed)
		return err
	}); err != nil {
		return err
	}
	rec := deliveryRecord{Name: d.Name, Kind: kind, EKCertSHA256: d.EKCertSHA256, PCRs: pcrs, InstalledAt: a.now().UTC()}
	return a.updatePinned(ctx, func(tx *store.Tx) error {
		if err := tx.WriteBlob(deliveryRec(d.Name), blob.Marshal()); err != nil {
			return err
		}
		return tx.Put(deliveryRec(d.Name), rec)
	})
}

// deliveryKind says what a delivery's public area is, from the area
// itself: a sealed data object ("secret") or a signing key ("key") of an
// approved type, either usable by policy only (no userWithAuth), never a
// decryption or restricted key.
func deliveryKind(pub tpm2.TPMTPublic) (string, error) {
	at := pub.ObjectAttributes
	if at.UserWithAuth || at.Decrypt || at.Restricted || len(pub.AuthPolicy.Buffer) != 32 {
		return "", fmt.Errorf("%w: a delivery usable other than by its policy, or a decryption key", api.ErrBadInput)
	}
	switch pub.Type {
	case tpm2.TPMAlgKeyedHash:
		if at.SignEncrypt {
			return "", fmt.Errorf("%w: a delivered HMAC key", api.ErrBadInput)
		}
		return "secret", nil
	case tpm2.TPMAlgECC, tpm2.TPMAlgRSA:
		if !at.SignEncrypt {
			return "", fmt.Errorf("%w: a delivered key that does not sign", api.ErrBadInput)
		}
		if _, err := publicKey(pub); err != nil {
			return "", fmt.Errorf("%w: a delivered key: %v", api.ErrBadInput, err)
		}
		return "key", nil
	}
	return "", fmt.Errorf("%w: a delivery of type %v", api.ErrBadInput, pub.Type)
}

// withEK loads (or finds) the EK the certificate with SHA-256 sum names and
// runs fn with it and a session for its USER role (PolicySecret
// endorsement, salted to the SRK).
func (a *Agent) withEK(ctx context.Context, sum string, fn func(ek tpm.Object, auth tpm2.Session) error) error {
	key, err := a.ekCertBySum(ctx, sum)
	if err != nil {
		return err
	}
	handle, pub, tmpl, _, err := ekPublic(key)
	if err != nil {
		return err
	}
	if err := a.keys.EvictResident(); err != nil {
		return err
	}
	ek, flushEK, err := a.t.EK(handle, pub, tmpl)
	if err != nil {
		return err
	}
	defer func() { _ = flushEK() }()
	ps, err := a.t.EKPolicySession()
	if err != nil {
		return err
	}
	defer ps.Close()
	return fn(ek, ps.Session())
}

// AttestSecret unseals a delivered secret: loaded under the EK, then
// TPM2_Unseal in a policy session salted to the SRK that encrypts the
// answer, after PolicyPCR (the PCRs as they are now, which must be those
// of the appraisal that delivered it) and PolicyCommandCode(Unseal). The
// caller clears the result.
func (a *Agent) AttestSecret(ctx context.Context, req api.AttestSecretRequest) (api.AttestSecretResult, error) {
	secret, err := a.attestSecret(ctx, req.Name)
	return api.AttestSecretResult{Secret: secret}, err
}

func (a *Agent) attestSecret(ctx context.Context, name string) ([]byte, error) {
	defer a.lock()()
	return auditedResult(ctx, a, "attest-secret", map[string]string{"secret": name}, func() ([]byte, error) {
		var secret []byte
		err := a.withDelivery(ctx, name, "secret", tpm2.TPMCCUnseal, func(obj tpm.Object, auth tpm2.Session) (err error) {
			secret, err = a.t.UnsealWith(obj, auth)
			return err
		})
		return secret, err
	})
}

// AttestSign signs digest with a key the fleet endpoint delivered (attest
// fetch), as Sign does with provd's keys: in a policy session as for a
// secret, ending in PolicyCommandCode(Sign); the signature is verified
// against the key's public area. The default hash is the key's (SHA-384
// for P-384, else SHA-256).
func (a *Agent) AttestSign(ctx context.Context, name string, digest []byte, opts api.SignOptions) ([]byte, error) {
	defer a.lock()()
	return auditedResult(ctx, a, "attest-sign", map[string]string{"key": name}, func() ([]byte, error) {
		var sig []byte
		err := a.withDelivery(ctx, name, "key", tpm2.TPMCCSign, func(obj tpm.Object, auth tpm2.Session) (err error) {
			def := crypto.SHA256
			if p, perr := publicKey(obj.Public); perr == nil {
				if ec, ok := p.(*ecdsa.PublicKey); ok && ec.Curve == elliptic.P384() {
					def = crypto.SHA384
				}
			}
			finish, err := a.signDigest(name, obj, auth, obj.Public.Type, def, digest, opts)
			if err != nil {
				return err
			}
			sig, err = finish()
			return err
		})
		return sig, err
	})
}

// withDelivery loads the delivered object name of kind under the EK and
// runs fn with it and a policy session for command cc, salted to the SRK
// (encrypting the answer of an Unseal),
// after PolicyPCR (the PCRs as they are now, which must be those of the
// appraisal that delivered it) and PolicySecret(the AK: its authValue,
// which only provd's state holds, in a salted HMAC session).
func (a *Agent) withDelivery(ctx context.Context, name, kind string, cc tpm2.TPMCC, fn func(obj tpm.Object, auth tpm2.Session) error) error {
	if err := fleetapi.CheckSecretName(name); err != nil {
		return fmt.Errorf("%w: %v", api.ErrBadInput, err)
	}
	if err := a.requireIdentity(ctx); err != nil {
		return err
	}
	var rec deliveryRecord
	var raw []byte
	err := a.st.View(ctx, func(tx *store.Tx) error {
		if err := tx.Get(deliveryRec(name), &rec); err != nil {
			return err
		}
		var err error
		raw, err = tx.ReadBlob(deliveryRec(name))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: no delivered %s %q (provd attest fetch)", api.ErrNotFound, kind, name)
	}
	if err != nil {
		return err
	}
	if got := cmp.Or(rec.Kind, "secret"); got != kind {
		return fmt.Errorf("%w: %q is a delivered %s, not a %s", api.ErrNotPermitted, name, got, kind)
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return fmt.Errorf("%w: delivered %s %q: %v", api.ErrTampered, kind, name, err)
	}
	sel := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{}}
	for _, i := range rec.PCRs {
		sel.Values[i] = make([]byte, 32)
	}
	return a.withAttestKey(ctx, func(ak tpm.Object, akAuth []byte) error {
		return a.withEK(ctx, rec.EKCertSHA256, func(ek tpm.Object, auth tpm2.Session) error {
			obj, err := a.t.Load(ek, auth, blob)
			if err != nil {
				return err
			}
			defer func() { _ = a.t.Flush(obj.Handle) }()
			// Unseal's answer is the secret: the session encrypts it. A
			// signature is no secret, and TPM2_Sign's answer cannot be
			// encrypted (TPM_RC_ATTRIBUTES): salted only.
			start := func() (*tpm.PolicySession, error) { return a.t.StartSaltedPolicySession(nil) }
			if cc == tpm2.TPMCCUnseal {
				start = func() (*tpm.PolicySession, error) { return a.t.StartSecretPolicySession(tpm.EncryptOut, nil) }
			}
			ps, err := start()
			if err != nil {
				return err
			}
			defer ps.Close()
			if err := ps.PolicyPCR(sel.Selection(), nil); err != nil {
				return err
			}
			opts := []tpm2.AuthOption{tpm2.Auth(akAuth)}
			if srk, err := a.t.SRK(); err == nil {
				opts = append(opts, tpm2.Salted(srk.Handle, srk.Public))
			}
			if err := ps.PolicySecretOf(ak, tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)); err != nil {
				return err
			}
			if err := ps.PolicyCommandCode(cc); err != nil {
				return err
			}
			return fn(obj, ps.Session())
		})
	})
}

// attestVerdictRec names the last fleet verdict's record.
const attestVerdictRec = "attest_verdict"

// AttestRecord keeps the fleet endpoint's last verdict for status (audited
// like every change of the state).
func (a *Agent) AttestRecord(ctx context.Context, v api.AttestVerdict) (api.AttestVerdict, error) {
	defer a.lock()()
	pass := "fail"
	if v.Pass {
		pass = "pass"
	}
	return auditedResult(ctx, a, "attest-record", map[string]string{"device_id": v.DeviceID, "verdict": pass}, func() (api.AttestVerdict, error) {
		if len(v.Reasons) > 64 || len(v.Endpoint) > 512 || len(v.DeviceID) > 64 {
			return api.AttestVerdict{}, fmt.Errorf("%w: a verdict record too large", api.ErrBadInput)
		}
		return v, a.st.Update(ctx, func(tx *store.Tx) error { return tx.Put(attestVerdictRec, v) })
	})
}

// lastVerdict is the recorded fleet verdict, nil when none.
func lastVerdict(tx *store.Tx) (*api.AttestVerdict, error) {
	var v api.AttestVerdict
	err := tx.Get(attestVerdictRec, &v)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return &v, err
}

// requireIdentity refuses, before any TPM command, a state that pins no
// TPM identity (errNotPinned; api.ErrNotProvisioned where it holds no PK
// either), or a connection without the pin: every attestation operation's
// sessions are salted to the pinned SRK.
func (a *Agent) requireIdentity(ctx context.Context) error {
	if err := a.st.View(ctx, func(tx *store.Tx) error {
		err := requirePinned(tx)
		if errors.Is(err, errNotPinned) {
			// A state with no PK was never provisioned, or was zeroized:
			// provision is the way in, not provision --force (found on
			// reading: a fresh state's attest identity said "provisioned
			// but pins no TPM identity", exit 15).
			if _, perr := a.readPK(tx); errors.Is(perr, api.ErrNotProvisioned) {
				return perr
			}
		}
		return err
	}); err != nil {
		return err
	}
	if a.t.PinnedSRKName() == nil {
		return errNotPinned
	}
	return nil
}

// updatePinned is a.st.Update for what an operation made in the TPM the
// state pinned when it began (the AK, a delivered object): fn runs only
// while the state still pins one. Another process's zeroize meanwhile is
// errZeroizedMeanwhile and nothing is recorded (updateWhile; found with
// review 39's race: the AK's or the delivery's record was written into the
// wiped state, and outlived the zeroize into the next provision).
func (a *Agent) updatePinned(ctx context.Context, fn func(*store.Tx) error) error {
	return a.updateWhile(ctx, func(tx *store.Tx) (refusal, err error) {
		if err := requirePinned(tx); errors.Is(err, errNotPinned) {
			return errZeroizedMeanwhile, nil
		} else if err != nil {
			return nil, err
		}
		return nil, nil
	}, fn)
}

// cut is s at most n bytes long (not splitting a UTF-8 sequence matters
// not: the caller quotes it).
func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
