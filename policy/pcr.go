package policy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// MaxPCR is the highest PCR index accepted. The PC Client profile mandates
// PCRs 0..23; refusing higher indices keeps every selection a 3-byte bitmap
// that any PC Client TPM accepts.
const MaxPCR = 23

// ParsePCRList parses a comma-separated list of PCR indices such as "0,2,4,7"
// (spaces around items allowed) into a sorted list without duplicates.
// Empty items, signs, non-decimal forms and indices above MaxPCR are refused,
// so a typo cannot silently drop a PCR from a policy.
func ParsePCRList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("policy: empty PCR list")
	}
	var out []int
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		n, err := parsePCRIndex(item)
		if err != nil {
			return nil, fmt.Errorf("policy: PCR list %q: %w", s, err)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// parsePCRIndex accepts only canonical decimal (no sign, no leading zero), so
// that "7" and "07" can never name the same PCR twice in a file.
func parsePCRIndex(s string) (int, error) {
	if s == "" {
		return 0, fmt.Errorf("empty PCR index")
	}
	if len(s) > 2 || (len(s) == 2 && s[0] == '0') {
		return 0, fmt.Errorf("PCR index %q: want a decimal 0..%d", s, MaxPCR)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("PCR index %q: want a decimal 0..%d", s, MaxPCR)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > MaxPCR {
		return 0, fmt.Errorf("PCR index %q: want a decimal 0..%d", s, MaxPCR)
	}
	return n, nil
}

// PCRValues are expected (golden) PCR values in one bank. They are what a PCR
// policy is computed from, so they are validated strictly: an approved bank,
// at least one PCR, indices 0..23, every value exactly the bank's digest size.
type PCRValues struct {
	Bank   Bank
	Values map[int][]byte
}

// pcrValuesJSON is the file form of PCRValues; see docs/policy.md.
type pcrValuesJSON struct {
	Bank Bank              `json:"bank"`
	PCRs map[string]string `json:"pcrs"`
}

// ParsePCRValues parses and validates the JSON form of PCRValues:
//
//	{"bank":"sha256","pcrs":{"0":"<hex>","7":"<hex>"}}
//
// Unknown fields, duplicate keys, trailing data, non-canonical indices and
// digests of the wrong length are refused.
func ParsePCRValues(data []byte) (PCRValues, error) {
	var raw pcrValuesJSON
	if err := decodeStrict(data, &raw); err != nil {
		return PCRValues{}, fmt.Errorf("policy: PCR values: %w", err)
	}
	return raw.values()
}

func (raw pcrValuesJSON) values() (PCRValues, error) {
	if raw.Bank == 0 {
		return PCRValues{}, fmt.Errorf("policy: PCR values: missing bank")
	}
	v := PCRValues{Bank: raw.Bank, Values: make(map[int][]byte, len(raw.PCRs))}
	for k, hx := range raw.PCRs {
		idx, err := parsePCRIndex(k)
		if err != nil {
			return PCRValues{}, fmt.Errorf("policy: PCR values: %w", err)
		}
		d, err := decodeHex(hx)
		if err != nil {
			return PCRValues{}, fmt.Errorf("policy: PCR values: PCR %d: %w", idx, err)
		}
		v.Values[idx] = d
	}
	if err := v.Validate(); err != nil {
		return PCRValues{}, err
	}
	return v, nil
}

// Validate checks what ParsePCRValues checks, for values built in code.
func (v PCRValues) Validate() error {
	if !v.Bank.Valid() {
		return fmt.Errorf("policy: PCR values: bank %v: %w", v.Bank, catalog.ErrNotApproved)
	}
	if len(v.Values) == 0 {
		return fmt.Errorf("policy: PCR values: no PCRs")
	}
	size := v.Bank.Hash().Size()
	for idx, d := range v.Values {
		if idx < 0 || idx > MaxPCR {
			return fmt.Errorf("policy: PCR values: PCR index %d out of range 0..%d", idx, MaxPCR)
		}
		if len(d) != size {
			return fmt.Errorf("policy: PCR values: PCR %d: %d bytes, want %d for %v", idx, len(d), size, v.Bank)
		}
	}
	return nil
}

// MarshalJSON writes the file form that ParsePCRValues reads.
func (v PCRValues) MarshalJSON() ([]byte, error) {
	raw, err := v.toJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(raw)
}

// UnmarshalJSON parses the file form strictly (ParsePCRValues), so a
// document that embeds PCR values refuses bad ones while it is decoded.
func (v *PCRValues) UnmarshalJSON(b []byte) error {
	p, err := ParsePCRValues(b)
	if err != nil {
		return err
	}
	*v = p
	return nil
}

func (v PCRValues) toJSON() (pcrValuesJSON, error) {
	if err := v.Validate(); err != nil {
		return pcrValuesJSON{}, err
	}
	raw := pcrValuesJSON{Bank: v.Bank, PCRs: make(map[string]string, len(v.Values))}
	for idx, d := range v.Values {
		raw.PCRs[strconv.Itoa(idx)] = hex.EncodeToString(d)
	}
	return raw, nil
}

// Indices returns the selected PCR indices in ascending order, the order in
// which the TPM concatenates their values.
func (v PCRValues) Indices() []int {
	out := make([]int, 0, len(v.Values))
	for idx := range v.Values {
		out = append(out, idx)
	}
	slices.Sort(out)
	return out
}

// Selection returns the TPML_PCR_SELECTION for these PCRs: one bank, a
// PC-Client 3-byte bitmap.
func (v PCRValues) Selection() tpm2.TPMLPCRSelection {
	idx := v.Indices()
	u := make([]uint, len(idx))
	for i, n := range idx {
		u[i] = uint(n)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      v.Bank.Alg(),
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// CompositeDigest returns the pcrDigest of TPM2_PolicyPCR: H(value of the
// lowest selected PCR || ... || value of the highest).
//
// H is the hash of the policy session (alg), not of the bank: the TPM hashes
// the selected PCR values with the session's algorithm (Part 3, PolicyPCR), so
// SHA-384 golden values in a SHA-256 session give a 32-byte pcrDigest.
func (v PCRValues) CompositeDigest(alg tpm2.TPMIAlgHash) ([]byte, error) {
	if err := v.Validate(); err != nil {
		return nil, err
	}
	h, err := sessionHash(alg)
	if err != nil {
		return nil, err
	}
	hh := h.New()
	for _, idx := range v.Indices() {
		hh.Write(v.Values[idx])
	}
	return hh.Sum(nil), nil
}

// Equal reports whether two sets of values select the same PCRs in the same
// bank with the same values.
func (v PCRValues) Equal(o PCRValues) bool {
	if v.Bank != o.Bank || len(v.Values) != len(o.Values) {
		return false
	}
	for idx, d := range v.Values {
		od, ok := o.Values[idx]
		if !ok || !bytes.Equal(d, od) {
			return false
		}
	}
	return true
}

// clone returns a deep copy, so a Policy or SignedPolicy cannot be changed
// behind its digest by a caller mutating the map it passed in.
func (v PCRValues) clone() PCRValues {
	out := PCRValues{Bank: v.Bank, Values: make(map[int][]byte, len(v.Values))}
	for idx, d := range v.Values {
		out.Values[idx] = bytes.Clone(d)
	}
	return out
}

// Resettable lists the PCRs of values that software can reset without a
// reboot (TCG PC Client Platform Firmware Profile: 16, the debug PCR, and 23,
// the application PCR, from any locality; 17..22, the dynamic-launch PCRs,
// from localities 3 and 4). A policy over them is only as strong as the
// control of whoever may reset them: a reset and a replay of the recorded
// extends satisfies it again.
func (v PCRValues) Resettable() []int { return Resettable(v.Indices()) }

// Resettable lists those of pcrs that software can reset (PCRValues.Resettable).
func Resettable(pcrs []int) []int {
	var out []int
	for _, i := range pcrs {
		if i >= 16 && i <= 23 {
			out = append(out, i)
		}
	}
	return out
}
