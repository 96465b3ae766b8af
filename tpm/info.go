package tpm

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// EK certificate NV indices (TCG EK Credential Profile 2.0, 2.2.1.4).
var EKCertIndices = []struct {
	Handle tpm2.TPMHandle
	Key    string
}{
	{0x01c00002, "RSA 2048"},
	{0x01c0000a, "ECC P-256"},
	{0x01c00016, "ECC P-384"},
}

// Info describes a TPM as `provd tpm info` shows it.
type Info struct {
	Manufacturer   string      `json:"manufacturer"`
	VendorStrings  string      `json:"vendor_strings"`
	Firmware       string      `json:"firmware_version"`
	SpecFamily     string      `json:"spec_family"`
	SpecLevel      uint32      `json:"spec_level"`
	SpecRevision   string      `json:"spec_revision"`
	SpecDate       string      `json:"spec_date"`
	FIPS1402       bool        `json:"fips_140_2_mode"` // TPM_PT_MODES bit 0
	Algorithms     []string    `json:"algorithms"`
	Curves         []string    `json:"curves"`
	PCRBanks       []string    `json:"pcr_banks"`
	Lockout        LockoutInfo `json:"lockout"`
	SRK            SRKInfo     `json:"srk"`
	EKCertificates []EKCert    `json:"ek_certificates"`
}

// LockoutInfo is the dictionary-attack state.
type LockoutInfo struct {
	Counter         uint32 `json:"counter"`
	MaxTries        uint32 `json:"max_tries"`
	IntervalSeconds uint32 `json:"interval_seconds"`
	RecoverySeconds uint32 `json:"recovery_seconds"`
	InLockout       bool   `json:"in_lockout"`
}

// SRKInfo says whether the SRK is in place and genuine.
type SRKInfo struct {
	Handle   string `json:"handle"`
	Present  bool   `json:"present"`
	Name     string `json:"name,omitempty"`
	Template string `json:"template,omitempty"` // "matches" or "foreign"
}

// EKCert is one EK certificate NV index.
type EKCert struct {
	Index   string `json:"nv_index"`
	Key     string `json:"key"`
	Present bool   `json:"present"`
	Subject string `json:"subject,omitempty"`
	Issuer  string `json:"issuer,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Info reads what the TPM says about itself. It creates nothing persistent: the
// SRK check recreates the template primary transiently and flushes it.
func (t *TPM) Info() (Info, error) {
	props, err := t.properties(tpm2.TPMPTFamilyIndicator, 0x40)
	if err != nil {
		return Info{}, err
	}
	var in Info
	in.Manufacturer = fourCC(props[tpm2.TPMPTManufacturer])
	var vendor strings.Builder
	for _, p := range []tpm2.TPMPT{tpm2.TPMPTVendorString1, tpm2.TPMPTVendorString2, tpm2.TPMPTVendorString3, tpm2.TPMPTVendorString4} {
		vendor.WriteString(fourCC(props[p]))
	}
	in.VendorStrings = strings.TrimSpace(vendor.String())
	fw1, fw2 := props[tpm2.TPMPTFirmwareVersion1], props[tpm2.TPMPTFirmwareVersion2]
	in.Firmware = fmt.Sprintf("%d.%d.%d.%d", fw1>>16, fw1&0xffff, fw2>>16, fw2&0xffff)
	in.SpecFamily = fourCC(props[tpm2.TPMPTFamilyIndicator])
	in.SpecLevel = props[tpm2.TPMPTLevel]
	in.SpecRevision = fmt.Sprintf("%d.%02d", props[tpm2.TPMPTRevision]/100, props[tpm2.TPMPTRevision]%100)
	in.SpecDate = fmt.Sprintf("%d day %d", props[tpm2.TPMPTYear], props[tpm2.TPMPTDayofYear])
	in.FIPS1402 = props[tpm2.TPMPTModes]&1 == 1

	vars, err := t.properties(tpm2.TPMPTPermanent, 0x40)
	if err != nil {
		return Info{}, err
	}
	in.Lockout = LockoutInfo{
		Counter:         vars[tpm2.TPMPTLockoutCounter],
		MaxTries:        vars[tpm2.TPMPTMaxAuthFail],
		IntervalSeconds: vars[tpm2.TPMPTLockoutInterval],
		RecoverySeconds: vars[tpm2.TPMPTLockoutRecovery],
		InLockout:       vars[tpm2.TPMPTPermanent]&(1<<9) != 0, // TPMA_PERMANENT.inLockout
	}

	if in.Algorithms, err = t.algorithms(); err != nil {
		return Info{}, err
	}
	if in.Curves, err = t.curves(); err != nil {
		return Info{}, err
	}
	banks, err := t.PCRBanks()
	if err != nil {
		return Info{}, err
	}
	for _, b := range banks {
		in.PCRBanks = append(in.PCRBanks, AlgName(tpm2.TPMAlgID(b)))
	}
	if in.SRK, err = t.srkInfo(); err != nil {
		return Info{}, err
	}
	for _, ek := range EKCertIndices {
		in.EKCertificates = append(in.EKCertificates, t.ekCert(ek.Handle, ek.Key))
	}
	return in, nil
}

// OwnerAuthSet reports whether the owner hierarchy has an authorization
// value (TPMA_PERMANENT.ownerAuthSet). Without one, any process that can
// send TPM commands may act as the owner: define and undefine NV indices in
// the owner range (provd's counter and audit anchor among them), evict
// persistent objects, create primaries.
func (t *TPM) OwnerAuthSet() (bool, error) {
	p, err := t.properties(tpm2.TPMPTPermanent, 1)
	if err != nil {
		return false, err
	}
	return p[tpm2.TPMPTPermanent]&1 != 0, nil
}

// Permanent is what TPMA_PERMANENT says about who may act on the TPM.
type Permanent struct {
	OwnerAuthSet   bool // the owner hierarchy has an authorization value
	LockoutAuthSet bool // the lockout hierarchy has one
	DisableClear   bool // TPM2_Clear is disabled (TPM2_ClearControl)
	InLockout      bool // dictionary-attack lockout
	// Authenticated: read in an audit session salted to the pinned SRK, so
	// the response HMAC covers it (found by review: an interposer could hide
	// the warnings status derives from it). False when no SRK is pinned,
	// or (PermanentStateAsIs) none is at its handle.
	Authenticated bool
}

// PermanentState reads TPMA_PERMANENT, authenticated when an SRK is pinned
// (SRK: created again where its handle is empty).
func (t *TPM) PermanentState() (Permanent, error) { return t.permanentState(t.SRK) }

// PermanentStateAsIs is PermanentState for reads that must not change the
// TPM (status): it never creates the SRK, and where the pinned SRK is not
// at its handle (zeroize --srk evicted it, or A1 says so) the read is
// unauthenticated, and says so (found by review 26: provd status put back
// the SRK zeroize --srk had evicted).
func (t *TPM) PermanentStateAsIs() (Permanent, error) {
	return t.permanentState(func() (Object, error) {
		srk, err := t.SRKIfThere()
		if errors.Is(err, ErrNotFound) {
			return Object{}, errNoSRKThere
		}
		return srk, err
	})
}

// errNoSRKThere: permanentState reads unauthenticated.
var errNoSRKThere = errors.New("no pinned SRK at its handle")

// permanentState reads TPMA_PERMANENT in a session salted to what srk
// gives; unauthenticated when no SRK is pinned or srk gives errNoSRKThere.
func (t *TPM) permanentState(srkOf func() (Object, error)) (Permanent, error) {
	var v uint32
	read := func(sessions ...tpm2.Session) error {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTPermanent), PropertyCount: 1}).Execute(t, sessions...)
		if err != nil {
			return Wrap("TPM2_GetCapability", err)
		}
		props, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTPermanent {
			return fmt.Errorf("TPM2_GetCapability: no TPMA_PERMANENT (%v)", err)
		}
		v = props.TPMProperty[0].Value
		return nil
	}
	var p Permanent
	srk, err := Object{}, errNoSRKThere
	if t.PinnedSRKName() != nil {
		srk, err = srkOf()
	}
	switch {
	case err == nil:
		if err := t.withHMACSession(func(s tpm2.Session) error { return read(s) }, tpm2.Salted(srk.Handle, srk.Public), tpm2.Audit()); err != nil {
			return p, err
		}
		p.Authenticated = true
	case !errors.Is(err, errNoSRKThere):
		return p, err
	default:
		if err := read(); err != nil {
			return p, err
		}
	}
	p.OwnerAuthSet, p.LockoutAuthSet = v&(1<<0) != 0, v&(1<<2) != 0
	p.DisableClear, p.InLockout = v&(1<<8) != 0, v&(1<<9) != 0
	return p, nil
}

// properties reads count TPM properties starting at first.
func (t *TPM) properties(first tpm2.TPMPT, count uint32) (map[tpm2.TPMPT]uint32, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(first), PropertyCount: count}).Execute(t)
	if err != nil {
		return nil, Wrap("TPM2_GetCapability", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability: %w", err)
	}
	out := make(map[tpm2.TPMPT]uint32, len(props.TPMProperty))
	for _, p := range props.TPMProperty {
		out[p.Property] = p.Value
	}
	return out, nil
}

func (t *TPM) algorithms() ([]string, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapAlgs, Property: 0, PropertyCount: 128}).Execute(t)
	if err != nil {
		return nil, Wrap("TPM2_GetCapability", err)
	}
	algs, err := rsp.CapabilityData.Data.Algorithms()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability: %w", err)
	}
	var out []string
	for _, a := range algs.AlgProperties {
		out = append(out, AlgName(a.Alg))
	}
	return out, nil
}

func (t *TPM) curves() ([]string, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapECCCurves, Property: 0, PropertyCount: 64}).Execute(t)
	if err != nil {
		return nil, Wrap("TPM2_GetCapability", err)
	}
	cs, err := rsp.CapabilityData.Data.ECCCurves()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability: %w", err)
	}
	var out []string
	for _, c := range cs.ECCCurves {
		out = append(out, curveName(c))
	}
	return out, nil
}

func (t *TPM) srkInfo() (info SRKInfo, err error) {
	info = SRKInfo{Handle: fmt.Sprintf("0x%08x", uint32(SRKHandle))}
	obj, err := t.ReadPublic(SRKHandle)
	if errors.Is(err, ErrNotFound) {
		return info, nil
	}
	if err != nil {
		return info, err
	}
	info.Present = true
	info.Name = fmt.Sprintf("%x", obj.Name.Buffer)
	primary, err := t.createPrimary(tpm2.TPMRHOwner, SRKTemplate)
	if err != nil {
		return info, err
	}
	defer t.flushInto(&err, primary.Handle)
	info.Template = "foreign"
	if nameEqual(primary.Name, obj.Name) {
		info.Template = "matches"
	}
	return info, err
}

func (t *TPM) ekCert(h tpm2.TPMHandle, key string) EKCert {
	c := EKCert{Index: fmt.Sprintf("0x%08x", uint32(h)), Key: key}
	der, err := t.ReadNV(h)
	if errors.Is(err, ErrNotFound) {
		return c
	}
	c.Present = err == nil
	if err != nil {
		c.Error = err.Error()
		return c
	}
	cert, err := ParseEKCertificate(der)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	c.Subject = cert.Subject.String()
	c.Issuer = cert.Issuer.String()
	return c
}

// ParseEKCertificate parses an EK certificate read from NV. Some TPMs pad the
// DER with trailing bytes up to the index size; the DER's own length decides.
func ParseEKCertificate(b []byte) (*x509.Certificate, error) {
	if len(b) > 4 && b[0] == 0x30 && b[1] == 0x82 {
		n := int(binary.BigEndian.Uint16(b[2:4])) + 4
		if n <= len(b) {
			b = b[:n]
		}
	}
	cert, err := x509.ParseCertificate(b)
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	return cert, nil
}

// ReadNV reads the whole data of an NV index that needs no authorization
// beyond its own empty password (EK certificates, provd's counters), in chunks
// below every TPM's NV buffer maximum we know (swtpm: 2048).
func (t *TPM) ReadNV(h tpm2.TPMHandle) ([]byte, error) {
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return nil, err
	}
	const chunk = 1024
	out := make([]byte, 0, x.Public.DataSize)
	for off := uint16(0); off < x.Public.DataSize; {
		n := min(uint16(chunk), x.Public.DataSize-off)
		rsp, err := (tpm2.NVRead{AuthHandle: x.auth(), NVIndex: x.named(), Size: n, Offset: off}).Execute(t)
		if err != nil {
			return nil, nvWrap("TPM2_NV_Read", err)
		}
		out = append(out, rsp.Data.Buffer...)
		off += n
	}
	return out, nil
}

// fourCC turns a TPM property that packs four ASCII bytes into a string.
func fourCC(v uint32) string {
	b := []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	return strings.TrimRight(strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, string(b)), " ")
}

var algNames = map[tpm2.TPMAlgID]string{
	tpm2.TPMAlgRSA: "rsa", tpm2.TPMAlgTDES: "tdes", tpm2.TPMAlgSHA1: "sha1", tpm2.TPMAlgHMAC: "hmac",
	tpm2.TPMAlgAES: "aes", tpm2.TPMAlgMGF1: "mgf1", tpm2.TPMAlgKeyedHash: "keyedhash", tpm2.TPMAlgXOR: "xor",
	tpm2.TPMAlgSHA256: "sha256", tpm2.TPMAlgSHA384: "sha384", tpm2.TPMAlgSHA512: "sha512",
	tpm2.TPMAlgNull: "null", tpm2.TPMAlgSM3256: "sm3_256", tpm2.TPMAlgSM4: "sm4",
	tpm2.TPMAlgRSASSA: "rsassa", tpm2.TPMAlgRSAES: "rsaes", tpm2.TPMAlgRSAPSS: "rsapss", tpm2.TPMAlgOAEP: "oaep",
	tpm2.TPMAlgECDSA: "ecdsa", tpm2.TPMAlgECDH: "ecdh", tpm2.TPMAlgECDAA: "ecdaa", tpm2.TPMAlgSM2: "sm2",
	tpm2.TPMAlgECSchnorr: "ecschnorr", tpm2.TPMAlgECMQV: "ecmqv", tpm2.TPMAlgKDF1SP80056A: "kdf1_sp800_56a",
	tpm2.TPMAlgKDF2: "kdf2", tpm2.TPMAlgKDF1SP800108: "kdf1_sp800_108", tpm2.TPMAlgECC: "ecc",
	tpm2.TPMAlgSymCipher: "symcipher", tpm2.TPMAlgCamellia: "camellia", tpm2.TPMAlgSHA3256: "sha3_256",
	tpm2.TPMAlgSHA3384: "sha3_384", tpm2.TPMAlgSHA3512: "sha3_512", tpm2.TPMAlgCMAC: "cmac",
	tpm2.TPMAlgCTR: "ctr", tpm2.TPMAlgOFB: "ofb", tpm2.TPMAlgCBC: "cbc", tpm2.TPMAlgCFB: "cfb",
	tpm2.TPMAlgECB: "ecb", tpm2.TPMAlgCCM: "ccm", tpm2.TPMAlgGCM: "gcm", tpm2.TPMAlgKW: "kw", tpm2.TPMAlgKWP: "kwp",
}

// AlgName is the tpm2-tools style name of an algorithm.
func AlgName(a tpm2.TPMAlgID) string {
	if n, ok := algNames[a]; ok {
		return n
	}
	return fmt.Sprintf("0x%04x", uint16(a))
}

func curveName(c tpm2.TPMECCCurve) string {
	switch c {
	case tpm2.TPMECCNistP192:
		return "nist_p192"
	case tpm2.TPMECCNistP224:
		return "nist_p224"
	case tpm2.TPMECCNistP256:
		return "nist_p256"
	case tpm2.TPMECCNistP384:
		return "nist_p384"
	case tpm2.TPMECCNistP521:
		return "nist_p521"
	case tpm2.TPMECCBNP256:
		return "bn_p256"
	case tpm2.TPMECCBNP638:
		return "bn_p638"
	case tpm2.TPMECCSM2P256:
		return "sm2_p256"
	}
	return fmt.Sprintf("0x%04x", uint16(c))
}
