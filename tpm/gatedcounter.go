package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// A gated counter's name must be the same on every device of a fleet: signed
// policies embed PolicyNV on it, and one signed policy serves the whole
// fleet. A device's gate key has a device's name, so the counter's
// authPolicy cannot name it. It names instead, with TPM2_PolicyAuthorizeNV,
// an authorizer index whose public area (and so name) is fleet-constant and
// whose content, written once by provd and write-locked until the index is
// undefined, is the device's GatePolicy(gate, NV_Increment). The counter is
// then incremented only in a session that proved the gate's authorization
// and whose digest the authorizer holds.

// authorizerSize is the content of an authorizer index: a TPMT_HA (hash
// algorithm, then a SHA-256 digest), as PolicyAuthorizeNV reads it.
const authorizerSize = 2 + 32

// AuthorizerPublic is the public area of the authorizer index at h, locked
// (written and write-locked: its final name) or as defined.
func AuthorizerPublic(h tpm2.TPMHandle, locked bool) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:          tpm2.TPMNTOrdinary,
			AuthWrite:   true,
			WriteDefine: true, // NV_WriteLock holds until the index is undefined
			AuthRead:    true,
			OwnerRead:   true,
			NoDA:        true,
			Written:     locked,
			WriteLocked: locked,
		},
		DataSize: authorizerSize,
	}
}

// GatedCounterPublic is the public area of a counter at h incremented only
// through the authorizer at authorizer (see above), once written (as it is
// after DefineGatedCounter). Computed offline, its name is the same on every
// device: what signed policies bind to.
func GatedCounterPublic(h, authorizer tpm2.TPMHandle) (tpm2.TPMSNVPublic, error) {
	aname, err := NVPublicName(AuthorizerPublic(authorizer, true))
	if err != nil {
		return tpm2.TPMSNVPublic{}, err
	}
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return tpm2.TPMSNVPublic{}, err
	}
	if err := (tpm2.PolicyAuthorizeNV{NVIndex: tpm2.NamedHandle{Name: tpm2.TPM2BName{Buffer: aname}}}).Update(c); err != nil {
		return tpm2.TPMSNVPublic{}, err
	}
	p := GatedNVPublic(h, tpm2.TPMNTCounter, counterSize, c.Hash().Digest)
	p.Attributes.Written = true
	return p, nil
}

// DefineGatedCounter defines the authorizer at authorizer holding
// GatePolicy(gate, NV_Increment), locks it, defines the counter at h
// gated by it and increments it once (its name is final only after the
// first increment, and a counter has no value before). Indices already at
// either handle are replaced: a counter's value never goes back, even
// across undefine and define, so replacing it can only move it forward. It
// returns the counter as the TPM states it; its name is checked against the
// one computed offline.
func (t *TPM) DefineGatedCounter(h, authorizer tpm2.TPMHandle, gate Gate) (x NVIndex, err error) {
	for _, old := range []tpm2.TPMHandle{h, authorizer} {
		if err := t.UndefineNV(old); err != nil && !errors.Is(err, ErrNotFound) {
			return NVIndex{}, err
		}
	}
	pol, err := GatePolicy(gate.Name.Buffer, tpm2.TPMCCNVIncrement)
	if err != nil {
		return NVIndex{}, err
	}
	content := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgSHA256))
	content = append(content, pol...)
	ax, err := t.DefineNV(AuthorizerPublic(authorizer, false))
	if err != nil {
		return NVIndex{}, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.UndefineNV(authorizer), ignoreNotFound(t.UndefineNV(h)))
		}
	}()
	if _, err := (tpm2.NVWrite{AuthHandle: ax.auth(), NVIndex: ax.named(), Data: tpm2.TPM2BMaxNVBuffer{Buffer: content}}).Execute(t); err != nil {
		return NVIndex{}, nvWrap("TPM2_NV_Write", err)
	}
	if ax, err = t.ReadNVPublic(authorizer); err != nil {
		return NVIndex{}, err
	}
	if _, err := (tpm2.NVWriteLock{AuthHandle: ax.auth(), NVIndex: ax.named()}).Execute(t); err != nil {
		return NVIndex{}, nvWrap("TPM2_NV_WriteLock", err)
	}
	// Another process may have written between define and lock, or an
	// interposer changed the write: what is locked in must be provd's, as
	// the TPM states it in an authenticated read.
	var got []byte
	if err := t.WithAuthenticatedNV(func(r *AuthenticatedNV) error {
		ax, err := r.ReadPublic(authorizer)
		if err != nil {
			return err
		}
		if !nameEqual(ax.Name, tpm2.TPM2BName{Buffer: mustNVName(AuthorizerPublic(authorizer, true))}) {
			return fmt.Errorf("NV index 0x%08x is not provd's locked authorizer (name %x)", uint32(authorizer), ax.Name.Buffer)
		}
		got, err = r.Read(ax, authorizerSize)
		return err
	}); err != nil {
		return NVIndex{}, err
	}
	if !bytes.Equal(got, content) {
		return NVIndex{}, fmt.Errorf("NV index 0x%08x was written by someone else before provd locked it", uint32(authorizer))
	}
	pub, err := GatedCounterPublic(h, authorizer)
	if err != nil {
		return NVIndex{}, err
	}
	unwritten := pub
	unwritten.Attributes.Written = false
	if _, err := t.DefineNV(unwritten); err != nil {
		return NVIndex{}, err
	}
	if err := t.IncrementGated(h, authorizer, gate, 1); err != nil {
		return NVIndex{}, err
	}
	if x, err = t.ReadNVPublic(h); err != nil {
		return NVIndex{}, err
	}
	want, err := NVPublicName(pub)
	if err != nil {
		return NVIndex{}, err
	}
	if !bytes.Equal(x.Name.Buffer, want) {
		return NVIndex{}, fmt.Errorf("gated counter 0x%08x has name %x, computed %x", uint32(h), x.Name.Buffer, want)
	}
	return x, nil
}

func mustNVName(p tpm2.TPMSNVPublic) []byte {
	n, err := NVPublicName(p)
	if err != nil {
		return nil
	}
	return n
}

func ignoreNotFound(err error) error {
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// IncrementGated adds n to the gated counter at h, one step at a time: the
// loaded gate proves its authorization, the session's digest is checked
// against the authorizer's content (PolicyAuthorizeNV), and NV_Increment runs
// in that session (the TPM resets the session's digest after each command,
// so each step runs the policy again). 2 commands (ReadNVPublic of both
// indices), then 5 per step (StartAuthSession of the one-use HMAC session and
// PolicySecret, PolicyCommandCode, PolicyAuthorizeNV, NV_Increment), plus
// StartAuthSession and FlushContext of the policy session. With an SRK
// pinned the policy session is salted to it, so the TPM checks
// NV_Increment's command HMAC and go-tpm its response HMAC: an increment
// dropped on the bus and answered with success is ErrResponseForged. The
// caller still reads the counter back through an authenticated path
// (ReadCounterAuthenticated).
func (t *TPM) IncrementGated(h, authorizer tpm2.TPMHandle, gate Gate, n uint64) (err error) {
	if n == 0 {
		return nil
	}
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return err
	}
	if x.Public.Attributes.NT != tpm2.TPMNTCounter {
		return fmt.Errorf("NV index 0x%08x is not a counter", uint32(h))
	}
	ax, err := t.ReadNVPublic(authorizer)
	if err != nil {
		return err
	}
	// Each proof is for one increment of x (its name then: the first
	// increment changes it).
	incr := func() []byte {
		return commandCpHash(tpm2.TPMCCNVIncrement, []tpm2.TPM2BName{x.Name, x.Name}, nil)
	}
	s, err := t.gateSession(gate, tpm2.TPMCCNVIncrement, incr())
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// An increment held on the bus must not run later (found
			// by review: it revoked the policy installed after).
			err = errors.Join(err, t.spend(s))
			return
		}
		if cerr := s.Close(); cerr != nil {
			err = cerr
		}
	}()
	for i := uint64(0); i < n; i++ {
		if i > 0 {
			if err := t.proveGate(s, nil, gate, tpm2.TPMCCNVIncrement, incr()); err != nil {
				return err
			}
		}
		if _, err := (tpm2.PolicyAuthorizeNV{AuthHandle: ax.auth(), NVIndex: ax.named(), PolicySession: s.stepHandle()}).Execute(t); err != nil {
			return notSatisfied("TPM2_PolicyAuthorizeNV", err, tpm2.TPMRCValue, tpm2.TPMRCPolicy)
		}
		if _, err := (tpm2.NVIncrement{AuthHandle: tpm2.AuthHandle{Handle: h, Name: x.Name, Auth: s.Session()}, NVIndex: x.named()}).Execute(t); err != nil {
			return notSatisfied("TPM2_NV_Increment", guarded("TPM2_NV_Increment", err, 1), tpm2.TPMRCPolicyFail)
		}
		// The first increment writes the counter: its name changes once.
		if i == 0 && !x.Public.Attributes.Written {
			if x, err = t.ReadNVPublic(h); err != nil {
				return err
			}
		}
	}
	return nil
}
