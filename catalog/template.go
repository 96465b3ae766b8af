package catalog

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Template is the public area of an operational key of this type and usage
// with authPolicy, before the origin attributes (which differ between derived
// and created keys) are set. Schemes are TPM_ALG_NULL so that each use names
// its (approved) scheme and hash.
func (kt Type) Template(usage string, authPolicy []byte) tpm2.TPMTPublic {
	attrs := tpm2.TPMAObject{
		UserWithAuth:    false,
		AdminWithPolicy: true,
		NoDA:            true,
		SignEncrypt:     usage == UsageSign || usage == UsageHMAC,
		Decrypt:         usage == UsageDecrypt || usage == UsageECDH,
	}
	null := tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}
	t := tpm2.TPMTPublic{
		Type:             kt.Alg,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: attrs,
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: authPolicy},
	}
	switch kt.Alg {
	case tpm2.TPMAlgECC:
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: null,
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   kt.Curve,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		})
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
	case tpm2.TPMAlgRSA:
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: null,
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   tpm2.TPMKeyBits(kt.Bits),
		})
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{})
	case tpm2.TPMAlgKeyedHash:
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		})
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{})
	case tpm2.TPMAlgSymCipher:
		// Both directions of TPM2_EncryptDecrypt2: sign allows encryption,
		// decrypt allows decryption.
		t.ObjectAttributes.SignEncrypt = true
		t.ObjectAttributes.Decrypt = true
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgSymCipher, &tpm2.TPMSSymCipherParms{
			Sym: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(kt.Bits)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
		})
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgSymCipher, &tpm2.TPM2BDigest{})
	}
	return t
}

// CreatedTemplate is the public area provd sends to TPM2_Create for a
// created key of this type and usage with authPolicy: the TPM generates the
// private part (sensitiveDataOrigin); not extractable: fixedTPM|fixedParent;
// extractable: both clear. encryptedDuplication stays clear so that the
// officer can approve an export as a backup (a duplicate to TPM_RH_NULL,
// which encryptedDuplication refuses); which parents a key may go to is its
// policy's say (PolicyDuplicationSelect in the officer's approval), and
// provd always wraps a duplicate it makes with an inner wrapper.
func (kt Type) CreatedTemplate(usage string, authPolicy []byte, extractable bool) tpm2.TPMTPublic {
	t := kt.Template(usage, authPolicy)
	t.ObjectAttributes.SensitiveDataOrigin = true
	t.ObjectAttributes.FixedTPM = !extractable
	t.ObjectAttributes.FixedParent = !extractable
	return t
}

// UnderMovable is template t as a child of a movable PK (provision
// --duplicable-to/--duplicable-by) when movable is true, t otherwise. The
// TPM refuses a fixedTPM object under a parent without fixedTPM, and a
// child of a parent with encryptedDuplication that lacks it (unless it is
// fixedTPM): so such a child has fixedTPM clear and encryptedDuplication
// set. Its fixedParent is unchanged: a key not born extractable still
// never leaves but with the PK, to where the PK may go.
func UnderMovable(t tpm2.TPMTPublic, movable bool) tpm2.TPMTPublic {
	if movable {
		t.ObjectAttributes.FixedTPM = false
		t.ObjectAttributes.EncryptedDuplication = true
	}
	return t
}

// TypeOf recognizes the approved type and the usage of an operational
// key's public area (an imported key, a duplicate, a moved PK's record, a
// loaded key), or refuses it: ErrNotApproved for a type outside the
// catalog, and for what provd's keys never carry (found by review 58: an
// RSA-2048 key of exponent 3, or a P-256 key of SHA-1 nameAlg or a fixed
// ECDSA-SHA-1 scheme, was an approved key): a nameAlg that is not an
// approved hash, a scheme, symmetric definition or KDF of its own (each
// use names its approved scheme: Template), or a public key PublicKey
// refuses (an exponent under 65537, a point off its curve); ErrUsage for
// a key that both signs and decrypts (or neither).
func TypeOf(pub tpm2.TPMTPublic) (Type, string, error) {
	var name string
	var bare bool // no scheme, symmetric definition or KDF
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil {
			return Type{}, "", err
		}
		switch p.CurveID {
		case tpm2.TPMECCNistP256:
			name = "ecc-p256"
		case tpm2.TPMECCNistP384:
			name = "ecc-p384"
		}
		bare = p.Scheme.Scheme == tpm2.TPMAlgNull && p.Symmetric.Algorithm == tpm2.TPMAlgNull && p.KDF.Scheme == tpm2.TPMAlgNull
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		if err != nil {
			return Type{}, "", err
		}
		name = fmt.Sprintf("rsa-%d", p.KeyBits)
		bare = p.Scheme.Scheme == tpm2.TPMAlgNull && p.Symmetric.Algorithm == tpm2.TPMAlgNull
	}
	kt, err := Lookup(name, false)
	if err != nil {
		return kt, "", fmt.Errorf("a %v key: %w", pub.Type, ErrNotApproved)
	}
	if _, err := HashByAlg(pub.NameAlg); err != nil {
		return kt, "", fmt.Errorf("a %s key's nameAlg: %w", kt.Name, err)
	}
	if !bare {
		return kt, "", fmt.Errorf("a %s key with a scheme, symmetric definition or KDF of its own: %w (provd's keys carry none: each use names its scheme)", kt.Name, ErrNotApproved)
	}
	if _, err := PublicKey(pub); err != nil {
		return kt, "", fmt.Errorf("a %s key: %w", kt.Name, err)
	}
	a := pub.ObjectAttributes
	switch {
	case a.SignEncrypt && !a.Decrypt:
		return kt, UsageSign, nil
	case a.Decrypt && !a.SignEncrypt && kt.Alg == tpm2.TPMAlgECC:
		return kt, UsageECDH, nil
	case a.Decrypt && !a.SignEncrypt:
		return kt, UsageDecrypt, nil
	}
	return kt, "", fmt.Errorf("%w: the key is both sign and decrypt (or neither); provd keeps usages apart", ErrUsage)
}

// DeriveTemplate is the TPMT_TEMPLATE of a derived object: tmpl's type,
// nameAlg, attributes, policy and parameters, with TPMS_DERIVE{label, context}
// in the unique field. A derivation parent refuses an ordinary TPMT_PUBLIC
// (TPM_RC_INSUFFICIENT).
func DeriveTemplate(tmpl tpm2.TPMTPublic, label, context []byte) tpm2.TPMTTemplate {
	return tpm2.TPMTTemplate{
		Type:             tmpl.Type,
		NameAlg:          tmpl.NameAlg,
		ObjectAttributes: tmpl.ObjectAttributes,
		AuthPolicy:       tmpl.AuthPolicy,
		Parameters:       tmpl.Parameters,
		Unique: tpm2.TPMSDerive{
			Label:   tpm2.TPM2BLabel{Buffer: label},
			Context: tpm2.TPM2BLabel{Buffer: context},
		},
	}
}

// A key-encryption key's usages: it wraps (AES encryption only: provd key
// export) or it unwraps (AES decryption only: provd key import), never
// both, and the TPM holds it to that (TPM2_EncryptDecrypt2 refuses the other
// direction with TPM_RC_ATTRIBUTES). A device that only backs keys up holds
// no key that can open a backup (found by review: one KEK that did both let
// root on any device decrypt every backup made under it).
const (
	UsageWrap   = "wrap"
	UsageUnwrap = "unwrap"
)

// KEKTemplate is the public area of an AES key-encryption key of bits (128
// or 256) and usage (UsageWrap: encrypt only; UsageUnwrap: decrypt only)
// entered from custodians' components: mode ECB only (the block cipher
// under AES key wrap, never a data cipher), fixedTPM|fixedParent (it never
// leaves the TPM), sensitiveDataOrigin clear (its bits came from outside),
// userWithAuth, so that one HMAC session keyed by its authValue serves the
// 6n block operations of a wrap; it loads only through the PK's policy,
// which is where the platform is checked. authPolicy is empty: with
// adminWithPolicy clear, nothing but the authValue's holder can act on it,
// and no policy can let it be duplicated (fixedParent).
func KEKTemplate(bits int, usage string) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgSymCipher,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			UserWithAuth: true,
			NoDA:         true,
			Decrypt:      usage == UsageUnwrap,
			SignEncrypt:  usage == UsageWrap,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgSymCipher, &tpm2.TPMSSymCipherParms{
			Sym: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(bits)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgECB),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgSymCipher, &tpm2.TPM2BDigest{}),
	}
}

// MinKEKBits is the smallest AES KEK that may wrap a key of this type, as
// the FIPS key-output rules ask (a wrapping key at least as strong as the
// key it wraps, SP 800-57 part 1 table 2): AES-128 for RSA-2048 and P-256,
// AES-256 for RSA-3072 and up and for P-384.
func (kt Type) MinKEKBits() int {
	switch {
	case kt.Alg == tpm2.TPMAlgRSA && kt.Bits >= 3072, kt.Alg == tpm2.TPMAlgECC && kt.Bits > 256:
		return 256
	}
	return 128
}

// TransferTemplate is the public area of a device's transfer key, the
// parent that keys duplicated to it from a peer are imported under (provd
// peer identity), bound to the device's PK by its policy (TransferPolicy):
// an ECC P-256 storage key (restricted decrypt, AES-128-CFB) born in the TPM
// (fixedTPM, fixedParent, sensitiveDataOrigin), used in both roles only
// through its policy (userWithAuth clear, adminWithPolicy).
//
// userWithAuth is clear since review 74: with it, T's authValue (in the
// state directory) authorized any command of T's USER role, TPM2_Rewrap
// among them, which took a duplicate sent to T out of its outer wrapper
// (Rewrap to TPM_RH_NULL), and with the inner wrapper's key, which the
// activation gives on a good boot, root on the receiver opened the moved
// key in software. Its policy's branches name the three commands T is for:
// TPM2_ActivateCredential, TPM2_Import and TPM2_Load.
func TransferTemplate(authPolicy []byte) tpm2.TPMTPublic {
	t := LegacyTransferTemplate(authPolicy)
	t.ObjectAttributes.UserWithAuth = false
	return t
}

// LegacyTransferTemplate is the transfer key made before review 74: its
// USER role is its authValue (userWithAuth), its policy
// ActivationPolicy(pkName) alone. A device keeps one such key for the keys
// and the PK it received under it; no sender sends to it (IsTransferKey).
func LegacyTransferTemplate(authPolicy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			AdminWithPolicy:     true,
			NoDA:                true,
			Restricted:          true,
			Decrypt:             true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// ActivationPolicy is the branch of a transfer key's policy that
// TPM2_ActivateCredential takes, for the device whose PK has TPM name
// pkName: PolicySecret(the PK) then
// PolicyCommandCode(TPM2_ActivateCredential). A credential bound to the
// transfer key's name then opens only for whoever can authorize the PK (its
// policy and the state's authValue: the device's provd) in the TPM that
// holds both (found by review: with an authValue of its own, any process
// with TPM access could make a transfer-key look-alike, and a peer file
// naming it received the key). The name binds the policy, so a look-alike
// with another policy has another name, and one with this policy is of no
// use without the PK. It was the whole policy of a legacy transfer key.
func ActivationPolicy(pkName []byte) []byte {
	d := policyStep(make([]byte, sha256.Size), tpm2.TPMCCPolicySecret, pkName)
	d = policyStep(d, 0, nil) // the (empty) policyRef
	return commandCodeStep(d, tpm2.TPMCCActivateCredential)
}

// TransferBranches are the branches of the policy of the transfer key of
// the device whose PK has TPM name pkName, in the order PolicyOR takes
// them: ActivationPolicy, then PolicyAuthValue with
// PolicyCommandCode(TPM2_Import), then PolicyAuthValue with
// PolicyCommandCode(TPM2_Load). T's authValue imports and loads under T,
// and nothing else: no TPM2_Rewrap, no TPM2_Create under it, no
// TPM2_PolicySecret naming it (review 74).
func TransferBranches(pkName []byte) [][]byte {
	byValue := func(cc tpm2.TPMCC) []byte {
		return commandCodeStep(policyStep(make([]byte, sha256.Size), tpm2.TPMCCPolicyAuthValue, nil), cc)
	}
	return [][]byte{ActivationPolicy(pkName), byValue(tpm2.TPMCCImport), byValue(tpm2.TPMCCLoad)}
}

// TransferPolicy is the policy of the transfer key of the device whose PK
// has TPM name pkName: PolicyOR of TransferBranches.
func TransferPolicy(pkName []byte) []byte {
	h := sha256.New()
	h.Write(make([]byte, sha256.Size))
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMCCPolicyOR)))
	for _, b := range TransferBranches(pkName) {
		h.Write(b)
	}
	return h.Sum(nil)
}

// policyStep is a policy digest d extended with a command code (none when
// cc is 0) and arg: PolicyDigest_new = H(d || cc || arg).
func policyStep(d []byte, cc tpm2.TPMCC, arg []byte) []byte {
	h := sha256.New()
	h.Write(d)
	if cc != 0 {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(cc)))
	}
	h.Write(arg)
	return h.Sum(nil)
}

// commandCodeStep is d extended by TPM2_PolicyCommandCode(cc).
func commandCodeStep(d []byte, cc tpm2.TPMCC) []byte {
	return policyStep(d, tpm2.TPMCCPolicyCommandCode, binary.BigEndian.AppendUint32(nil, uint32(cc)))
}

// ChallengePrefix starts the secret of a credential that challenges a
// transfer key to prove itself resident (provd peer challenge, or the
// fleet endpoint before it approves duplications to it), and a peer answers
// only a credential that starts with it: provd peer prove is then no oracle
// for the credentials of duplicates (an inner key and an authValue), which
// never start so.
var ChallengePrefix = []byte("provd peer proof v1\x00")

// ChallengeAnswerSize is the answer's size: with the prefix, the 48 bytes
// of a duplicate's credential.
const ChallengeAnswerSize = 48 - 20

// IsTransferKey reports whether pub is the transfer key of the device
// whose PK is pkName: the template with that policy and any unique field.
// A legacy transfer key (made before review 74) is not one: a sender sends
// nothing to it.
//
// An area of another type is not one (found by review 58: its unique
// field, set to the template's ECC point, made go-tpm's Marshal panic on
// the union's tag, so a peer file whose parent was an RSA key crashed the
// CLI that read it).
func IsTransferKey(pub tpm2.TPMTPublic, pkName []byte) bool {
	return sameArea(pub, TransferTemplate(TransferPolicy(pkName)))
}

// IsLegacyTransferKey reports whether pub is the transfer key the device
// whose PK is pkName made before review 74 (LegacyTransferTemplate), which
// it keeps for what it received under it.
func IsLegacyTransferKey(pub tpm2.TPMTPublic, pkName []byte) bool {
	return sameArea(pub, LegacyTransferTemplate(ActivationPolicy(pkName)))
}

// sameArea reports whether pub is want but for its unique field.
func sameArea(pub, want tpm2.TPMTPublic) bool {
	if pub.Type != want.Type {
		return false
	}
	pub.Unique = want.Unique
	return string(tpm2.Marshal(pub)) == string(tpm2.Marshal(want))
}
