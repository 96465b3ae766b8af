package tpmproxy

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// Hardware is a model of a discrete TPM 2.0 on SPI or I2C: per-command
// times of the order published measurements give (docs/benchmarks.md,
// "The hardware model", cites them: ECDSA P-256 signatures at single digits
// per second on most PCs, Chrome's field study 200 ms at the median; RSA
// key generation in seconds, which is why TPMs pre-generate RSA key pairs).
// They are a model, not a chip: what it shows is the weight of each
// command, so that caching, ECC over RSA and the command count show what
// they are worth on hardware.
var Hardware = Model{
	Name: "hardware model",
	PerCommand: map[tpm2.TPMCC]time.Duration{
		tpm2.TPMCCStartup:            20 * time.Millisecond,
		tpm2.TPMCCSelfTest:           time.Second,
		tpm2.TPMCCGetTestResult:      5 * time.Millisecond,
		tpm2.TPMCCGetCapability:      5 * time.Millisecond,
		tpm2.TPMCCGetRandom:          5 * time.Millisecond,
		tpm2.TPMCCStartAuthSession:   60 * time.Millisecond,
		tpm2.TPMCCFlushContext:       2 * time.Millisecond,
		tpm2.TPMCCContextSave:        20 * time.Millisecond,
		tpm2.TPMCCContextLoad:        30 * time.Millisecond,
		tpm2.TPMCCReadPublic:         5 * time.Millisecond,
		tpm2.TPMCCLoad:               30 * time.Millisecond,
		tpm2.TPMCCLoadExternal:       30 * time.Millisecond,
		tpm2.TPMCCSign:               150 * time.Millisecond,
		tpm2.TPMCCVerifySignature:    100 * time.Millisecond,
		tpm2.TPMCCQuote:              150 * time.Millisecond,
		tpm2.TPMCCCertify:            150 * time.Millisecond,
		tpm2.TPMCCECDHZGen:           100 * time.Millisecond,
		tpm2.TPMCCRSADecrypt:         200 * time.Millisecond,
		tpm2.TPMCCUnseal:             20 * time.Millisecond,
		tpm2.TPMCCImport:             100 * time.Millisecond,
		tpm2.TPMCCDuplicate:          100 * time.Millisecond,
		tpm2.TPMCCActivateCredential: 150 * time.Millisecond,
		tpm2.TPMCCPCRRead:            5 * time.Millisecond,
		tpm2.TPMCCPCRExtend:          10 * time.Millisecond,
		tpm2.TPMCCNVRead:             10 * time.Millisecond,
		tpm2.TPMCCNVReadPublic:       5 * time.Millisecond,
		tpm2.TPMCCNVWrite:            30 * time.Millisecond,
		tpm2.TPMCCNVExtend:           30 * time.Millisecond,
		tpm2.TPMCCNVIncrement:        30 * time.Millisecond,
		tpm2.TPMCCNVDefineSpace:      30 * time.Millisecond, // NV writes, as NV_Write
		tpm2.TPMCCNVUndefineSpace:    30 * time.Millisecond,
		tpm2.TPMCCEvictControl:       50 * time.Millisecond,
		tpm2.TPMCCHMAC:               10 * time.Millisecond,
		tpm2.TPMCCEncryptDecrypt2:    10 * time.Millisecond,
	},
	Default: 5 * time.Millisecond, // policy commands and the rest
}

// Key generation, by the algorithm of the template: what the command code
// alone does not tell.
const (
	eccKeygen = 150 * time.Millisecond
	rsaKeygen = 3 * time.Second
)

// delayOf is how long model m holds the response to command cmd: key
// generation by the template's algorithm, the rest by code.
func (m *Model) delayOf(cmd []byte) time.Duration {
	if m == nil || m.PerCommand == nil {
		return 0
	}
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	switch cc {
	case tpm2.TPMCCCreate, tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreateLoaded:
		if templateAlg(cmd) == tpm2.TPMAlgRSA {
			return rsaKeygen
		}
		return eccKeygen
	}
	return m.Delay(cc)
}

// templateAlg reads the type of the inPublic of a Create, CreatePrimary or
// CreateLoaded command (one handle, an authorization area, inSensitive,
// then inPublic); 0 when the command does not parse so.
func templateAlg(cmd []byte) tpm2.TPMAlgID {
	off := 10 + 4 // header, the parent or hierarchy handle
	if binary.BigEndian.Uint16(cmd[0:2]) == uint16(tpm2.TPMSTSessions) {
		if len(cmd) < off+4 {
			return 0
		}
		off += 4 + int(binary.BigEndian.Uint32(cmd[off:off+4]))
	}
	if len(cmd) < off+2 {
		return 0
	}
	off += 2 + int(binary.BigEndian.Uint16(cmd[off:off+2])) // inSensitive
	if len(cmd) < off+4 {
		return 0
	}
	return tpm2.TPMAlgID(binary.BigEndian.Uint16(cmd[off+2 : off+4])) // inPublic: size, then type
}

// names are the commands the reports name; others print as hex.
var names = map[tpm2.TPMCC]string{
	tpm2.TPMCCStartup: "Startup", tpm2.TPMCCSelfTest: "SelfTest", tpm2.TPMCCGetTestResult: "GetTestResult",
	tpm2.TPMCCGetCapability: "GetCapability", tpm2.TPMCCGetRandom: "GetRandom", tpm2.TPMCCStartAuthSession: "StartAuthSession",
	tpm2.TPMCCFlushContext: "FlushContext", tpm2.TPMCCContextSave: "ContextSave", tpm2.TPMCCContextLoad: "ContextLoad",
	tpm2.TPMCCReadPublic: "ReadPublic", tpm2.TPMCCLoad: "Load", tpm2.TPMCCLoadExternal: "LoadExternal",
	tpm2.TPMCCCreate: "Create", tpm2.TPMCCCreatePrimary: "CreatePrimary", tpm2.TPMCCCreateLoaded: "CreateLoaded",
	tpm2.TPMCCSign: "Sign", tpm2.TPMCCVerifySignature: "VerifySignature", tpm2.TPMCCQuote: "Quote", tpm2.TPMCCCertify: "Certify",
	tpm2.TPMCCECDHZGen: "ECDH_ZGen", tpm2.TPMCCRSADecrypt: "RSA_Decrypt", tpm2.TPMCCUnseal: "Unseal", tpm2.TPMCCImport: "Import",
	tpm2.TPMCCDuplicate: "Duplicate", tpm2.TPMCCActivateCredential: "ActivateCredential", tpm2.TPMCCPCRRead: "PCR_Read",
	tpm2.TPMCCPCRExtend: "PCR_Extend", tpm2.TPMCCNVRead: "NV_Read", tpm2.TPMCCNVReadPublic: "NV_ReadPublic",
	tpm2.TPMCCNVWrite: "NV_Write", tpm2.TPMCCNVExtend: "NV_Extend", tpm2.TPMCCNVIncrement: "NV_Increment",
	tpm2.TPMCCEvictControl: "EvictControl", tpm2.TPMCCHMAC: "HMAC", tpm2.TPMCCEncryptDecrypt2: "EncryptDecrypt2",
	tpm2.TPMCCPolicyPCR: "PolicyPCR", tpm2.TPMCCPolicySecret: "PolicySecret", tpm2.TPMCCPolicyAuthValue: "PolicyAuthValue",
	tpm2.TPMCCPolicyCommandCode: "PolicyCommandCode", tpm2.TPMCCPolicyOR: "PolicyOR", tpm2.TPMCCPolicyAuthorize: "PolicyAuthorize",
	tpm2.TPMCCPolicyGetDigest: "PolicyGetDigest", tpm2.TPMCCPolicySigned: "PolicySigned", tpm2.TPMCCPolicyPassword: "PolicyPassword",
	tpm2.TPMCCPolicyRestart: "PolicyRestart", tpm2.TPMCCHashSequenceStart: "HashSequenceStart",
	tpm2.TPMCCNVDefineSpace: "NV_DefineSpace", tpm2.TPMCCNVUndefineSpace: "NV_UndefineSpace", tpm2.TPMCCNVWriteLock: "NV_WriteLock",
	tpm2.TPMCCPolicyNV: "PolicyNV", tpm2.TPMCCPolicyAuthorizeNV: "PolicyAuthorizeNV", tpm2.TPMCCPolicyTemplate: "PolicyTemplate",
	tpm2.TPMCCPolicyDuplicationSelect: "PolicyDuplicationSelect", tpm2.TPMCCPolicyNameHash: "PolicyNameHash", tpm2.TPMCCPolicyCpHash: "PolicyCpHash",
	tpm2.TPMCCMakeCredential: "MakeCredential", tpm2.TPMCCObjectChangeAuth: "ObjectChangeAuth", tpm2.TPMCCHash: "Hash",
	tpm2.TPMCCReadClock: "ReadClock", tpm2.TPMCCPCRReset: "PCR_Reset", tpm2.TPMCCTestParms: "TestParms",
}

// Name is command cc's name, as the TPM specification spells it without
// the TPM2_ prefix.
func Name(cc tpm2.TPMCC) string {
	if n, ok := names[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%03x", uint32(cc))
}

// Mix is counts written "Name n, ..." by decreasing count, then name.
func Mix(counts map[tpm2.TPMCC]int) string {
	type kv struct {
		name string
		n    int
	}
	var all []kv
	for cc, n := range counts {
		all = append(all, kv{Name(cc), n})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].n != all[j].n {
			return all[i].n > all[j].n
		}
		return all[i].name < all[j].name
	})
	parts := make([]string, len(all))
	for i, e := range all {
		parts[i] = fmt.Sprintf("%s %d", e.name, e.n)
	}
	return strings.Join(parts, ", ")
}
