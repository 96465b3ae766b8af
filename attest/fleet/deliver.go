package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/policy"
)

// Secrets an operator hands the endpoint are delivered to the devices of a
// class after each passing attestation that asks (attest fetch): each as a
// sealed data object in an outer duplication wrapper to the device's EK,
// made here in software (tpm2.CreateDuplicate). Nothing crosses the network
// in the clear but the TLS; the wrapper opens only in the TPM holding that
// EK; the object is usable only while the PCRs hold the values the passing
// appraisal saw, and only to be unsealed.

// MaxSecret is the largest secret: what a sealed data object holds.
const MaxSecret = 128

// DeliveryPolicy is the authPolicy of a delivered secret bound to the
// SHA-256 PCR values vals and to the device's AK (its TPM name ak):
// PolicyPCR, then PolicySecret(AK), then PolicyCommandCode(Unseal). The
// PCRs must hold the values that passed; only who proves the AK's
// authValue, which only provd's state holds, can use it (found by review:
// without PolicySecret, any process with TPM access imported a recorded
// delivery under the EK and unsealed it); and it can be unsealed only, not
// duplicated again.
func DeliveryPolicy(vals map[int][]byte, ak []byte) ([]byte, error) {
	v := policy.PCRValues{Bank: policy.BankSHA256, Values: vals}
	if err := v.Validate(); err != nil {
		return nil, err
	}
	d, err := v.CompositeDigest(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	for _, step := range []interface {
		Update(*tpm2.PolicyCalculator) error
	}{
		tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: d}, Pcrs: v.Selection()},
		tpm2.PolicySecret{AuthHandle: tpm2.NamedHandle{Name: tpm2.TPM2BName{Buffer: ak}}},
		tpm2.PolicyCommandCode{Code: tpm2.TPMCCUnseal},
	} {
		if err := step.Update(c); err != nil {
			return nil, err
		}
	}
	return c.Hash().Digest, nil
}

// DeliveryPublic is the public area of a delivered secret: a sealed data
// object (keyedHash, no scheme) with fixedTPM and fixedParent clear, as
// TPM2_Import requires, usable only through authPolicy; unique is
// SHA-256(seed || data) as the TPM computes it.
func DeliveryPublic(authPolicy, seed, data []byte) tpm2.TPMTPublic {
	h := sha256.New()
	h.Write(seed)
	h.Write(data)
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{NoDA: true},
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
		Unique:           tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: h.Sum(nil)}),
	}
}

// deliver seals the class's secrets to device d's EK, bound to the SHA-256
// PCR values the passing appraisal quoted.
func (e *Endpoint) deliver(ctx context.Context, d Device, view map[string]map[int]string) ([]fleetapi.Delivery, error) {
	secrets, err := e.cfg.Store.Secrets(ctx, d.Class)
	if err != nil || len(secrets) == 0 {
		return nil, err
	}
	vals := map[int][]byte{}
	var idx []int
	for i, h := range view["sha256"] {
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, err
		}
		vals[i] = b
		idx = append(idx, i)
	}
	if len(vals) == 0 {
		return nil, fmt.Errorf("fleet: device %s: no SHA-256 PCRs quoted to bind its secrets to", d.ID)
	}
	slices.Sort(idx)
	akPub, err := parsePublic(d.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("fleet: device %s: stored AK: %w", d.ID, err)
	}
	akName, err := tpm2.ObjectName(&akPub)
	if err != nil {
		return nil, err
	}
	digest, err := DeliveryPolicy(vals, akName.Buffer)
	if err != nil {
		return nil, err
	}
	ekPub, err := parsePublic(d.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("fleet: device %s: stored EK: %w", d.ID, err)
	}
	encap, err := tpm2.ImportEncapsulationKey(&ekPub)
	if err != nil {
		return nil, err
	}
	certSum := sha256.Sum256(d.EKCert)
	var out []fleetapi.Delivery
	for _, s := range secrets {
		seed := make([]byte, 32)
		if _, err := io.ReadFull(e.cfg.Rand, seed); err != nil {
			return nil, err
		}
		pub := DeliveryPublic(digest, seed, s.Value)
		name, err := tpm2.ObjectName(&pub)
		if err != nil {
			return nil, err
		}
		sens := tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgKeyedHash,
			SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: bytes.Clone(s.Value)}),
		}
		raw := tpm2.Marshal(sens)
		dup, wrapped, err := tpm2.CreateDuplicate(e.cfg.Rand, encap, name.Buffer, raw)
		clear(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, fleetapi.Delivery{Name: s.Name, EKCertSHA256: hex.EncodeToString(certSum[:]), Public: tpm2.Marshal(pub),
			Duplicate: dup, Seed: wrapped, PCRs: map[string][]int{"sha256": idx}})
	}
	return out, nil
}
