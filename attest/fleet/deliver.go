package fleet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/policy"
)

// Secrets and keys an operator hands the endpoint are delivered to the
// devices of a class after each passing attestation that asks (attest
// fetch): each as a sealed data object (a key: a signing key) in an outer
// duplication wrapper to the device's EK, made here in software
// (tpm2.CreateDuplicate). Nothing crosses the network
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
	return deliveryPolicy(vals, ak, tpm2.TPMCCUnseal)
}

// KeyDeliveryPolicy is the authPolicy of a delivered key: as
// DeliveryPolicy's, ending in PolicyCommandCode(Sign): it signs, and does
// nothing else (no unseal, no duplication, no certification).
func KeyDeliveryPolicy(vals map[int][]byte, ak []byte) ([]byte, error) {
	return deliveryPolicy(vals, ak, tpm2.TPMCCSign)
}

func deliveryPolicy(vals map[int][]byte, ak []byte, cc tpm2.TPMCC) ([]byte, error) {
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
		tpm2.PolicyCommandCode{Code: cc},
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

// ParseDeliveryKey reads a key an operator hands the endpoint: PKCS#8
// (DER), an approved signing key: ECDSA P-256 or P-384, or RSA 2048 or
// 3072 bits with exponent 65537 and balanced primes (what a TPM imports).
func ParseDeliveryKey(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, rejected("key: not a PKCS#8 private key")
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, rejected("key: ECDSA on %s, want P-256 or P-384", k.Curve.Params().Name)
		}
		return k, nil
	case *rsa.PrivateKey:
		// What a TPM imports: the sensitive part is one prime, of half the
		// modulus's size (found by review: a valid key with uneven primes,
		// or an RSA-4096 key, which swtpm and most TPMs refuse, failed on
		// every device of the class).
		n := k.N.BitLen()
		if (n != 2048 && n != 3072) || k.E != 65537 || len(k.Primes) != 2 || k.Primes[0].BitLen() != n/2 || k.Primes[1].BitLen() != n/2 {
			return nil, rejected("key: RSA of %d bits (exponent %d, %d primes), want 2048 or 3072 bits, exponent 65537, two primes of half the modulus each", n, k.E, len(k.Primes))
		}
		return k, nil
	}
	return nil, rejected("key: %T, want ECDSA or RSA", k)
}

// deliveredKey is the public area and sensitive part of a delivered key
// with authPolicy: a signing key (not restricted, no decrypt), usable
// through its policy only (userWithAuth and adminWithPolicy: no authValue
// ever counts), fixedTPM and fixedParent clear as TPM2_Import requires.
func deliveredKey(k crypto.Signer, authPolicy []byte) (tpm2.TPMTPublic, tpm2.TPMTSensitive, error) {
	pub := tpm2.TPMTPublic{
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{SignEncrypt: true, AdminWithPolicy: true, NoDA: true},
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: authPolicy},
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		curve, size := tpm2.TPMECCNistP256, 32
		if k.Curve == elliptic.P384() {
			curve, size = tpm2.TPMECCNistP384, 48
		}
		point, err := k.PublicKey.Bytes() // 04 || X || Y
		if err != nil {
			return pub, tpm2.TPMTSensitive{}, err
		}
		d, err := k.Bytes()
		if err != nil {
			return pub, tpm2.TPMTSensitive{}, err
		}
		pub.Type = tpm2.TPMAlgECC
		pub.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			// No fixed scheme: TPM2_Sign names ECDSA and the hash (found
			// by review: a P-384 key fixed to SHA-384 refused the CLI's
			// default SHA-256 with a misleading error).
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: curve,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(point[1 : 1+size])}, Y: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(point[1+size:])}})
		return pub, tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC,
			Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: d})}, nil
	case *rsa.PrivateKey:
		pub.Type = tpm2.TPMAlgRSA
		pub.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   tpm2.TPMKeyBits(k.N.BitLen()),
		})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
		return pub, tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgRSA,
			Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgRSA, &tpm2.TPM2BPrivateKeyRSA{Buffer: k.Primes[0].Bytes()})}, nil
	}
	return pub, tpm2.TPMTSensitive{}, fmt.Errorf("fleet: a delivered key of type %T", k)
}

// deliver seals the class's secrets to device d's EK, bound to the SHA-256
// PCR values the passing appraisal quoted.
func (e *Endpoint) deliver(ctx context.Context, d Device, view map[string]map[int]string) ([]fleetapi.Delivery, error) {
	secrets, err := e.cfg.Store.SecretsFor(ctx, d.ID)
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
	keyDigest, err := KeyDeliveryPolicy(vals, akName.Buffer)
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
		var pub tpm2.TPMTPublic
		var sens tpm2.TPMTSensitive
		if s.Kind == fleetapi.KindKey {
			k, err := ParseDeliveryKey(s.Value)
			if err != nil {
				return nil, fmt.Errorf("fleet: class %s: stored key %s: %w", d.Class, s.Name, err)
			}
			if pub, sens, err = deliveredKey(k, keyDigest); err != nil {
				return nil, err
			}
		} else {
			seed := make([]byte, 32)
			if _, err := io.ReadFull(e.cfg.Rand, seed); err != nil {
				return nil, err
			}
			pub = DeliveryPublic(digest, seed, s.Value)
			sens = tpm2.TPMTSensitive{
				SensitiveType: tpm2.TPMAlgKeyedHash,
				SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
				Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: bytes.Clone(s.Value)}),
			}
		}
		clear(s.Value)
		name, err := tpm2.ObjectName(&pub)
		if err != nil {
			return nil, err
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
