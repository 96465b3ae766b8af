package tpm

import (
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// maxPCRIndex is the highest PCR provd reads or extends: the PC Client profile
// has PCRs 0..23, and a 3-byte selection is what every such TPM accepts.
const maxPCRIndex = 23

// pcrReadBatch is how many PCRs one TPM2_PCR_Read is asked for: the TPM
// returns at most 8 digests per call (TPML_DIGEST holds 8).
const pcrReadBatch = 8

// pcrReadAttempts bounds the restarts of a multi-call PCRRead whose PCRs
// changed between its calls (pcrUpdateCounter moved).
const pcrReadAttempts = 4

// PCRRead returns the values of pcrs in bank. PCR_Read returns at most 8
// digests per call and may return fewer than asked, so PCRRead asks again for
// what is missing. If the PCR update counter moves between calls, the whole
// read starts over, so the values are one snapshot (as far as the counter
// tells: it does not count changes to PCRs 16 and 23).
func (t *TPM) PCRRead(bank tpm2.TPMIAlgHash, pcrs []int) (map[int][]byte, error) {
	want, err := checkPCRs(pcrs)
	if err != nil {
		return nil, err
	}
	return t.pcrRead(bank, want)
}

// PCRReadAuthenticated is PCRRead with every TPM2_PCR_Read in an audit
// session salted to the SRK (the pinned one, when pinned): the response HMAC,
// keyed by a salt only the TPM can decrypt, covers the values, so an
// interposer cannot choose the PCR values provd seals to. A changed response
// is ErrResponseForged. It costs a StartAuthSession and a FlushContext, or
// nothing in an operation's shared session (Share).
func (t *TPM) PCRReadAuthenticated(bank tpm2.TPMIAlgHash, pcrs []int) (vals map[int][]byte, err error) {
	want, err := checkPCRs(pcrs)
	if err != nil {
		return nil, err
	}
	read := func(s tpm2.Session) (err error) {
		vals, err = t.pcrRead(bank, want, s)
		return err
	}
	if ok, err := t.withSharedRead(read); ok {
		return vals, err
	}
	srk, err := t.SRK()
	if err != nil {
		return nil, err
	}
	err = t.withHMACSession(read, tpm2.Salted(srk.Handle, srk.Public), tpm2.Audit())
	return vals, err
}

// pcrRead reads want (checked) as one snapshot: it starts over when the PCR
// update counter moves between calls, pcrReadAttempts times at most.
func (t *TPM) pcrRead(bank tpm2.TPMIAlgHash, want []int, sessions ...tpm2.Session) (map[int][]byte, error) {
	for attempt := 0; ; attempt++ {
		vals, moved, err := t.pcrReadOnce(bank, want, sessions...)
		if err != nil || !moved {
			return vals, err
		}
		if attempt+1 >= pcrReadAttempts {
			return nil, fmt.Errorf("TPM2_PCR_Read: PCRs kept changing while being read (%d attempts)", pcrReadAttempts)
		}
	}
}

// PCRUpdateCounter returns the TPM's pcrUpdateCounter. It changes when a PCR
// changes, except PCRs 16 and 23 (the PC Client profile exempts them: measured
// on swtpm, extending either leaves the counter as it was). So two equal
// readings show that no PCR other than 16 and 23 changed in between; the TPM's
// own check of a policy session's PCRs at use (TPM_RC_PCR_CHANGED) has the
// same blind spot.
func (t *TPM) PCRUpdateCounter() (uint32, error) {
	// An empty selection reads no PCR but still reports the counter.
	rsp, err := (tpm2.PCRRead{}).Execute(t)
	if err != nil {
		return 0, Wrap("TPM2_PCR_Read", err)
	}
	return rsp.PCRUpdateCounter, nil
}

// pcrReadOnce reads want (sorted, unique) in as many calls as needed. moved
// reports that the update counter changed between calls.
func (t *TPM) pcrReadOnce(bank tpm2.TPMIAlgHash, want []int, sessions ...tpm2.Session) (vals map[int][]byte, moved bool, err error) {
	vals = make(map[int][]byte, len(want))
	var counter uint32
	first := true
	for missing := want; len(missing) > 0; {
		ask := missing[:min(len(missing), pcrReadBatch)]
		rsp, err := (tpm2.PCRRead{PCRSelectionIn: pcrSelection(bank, ask)}).Execute(t, sessions...)
		if err != nil {
			return nil, false, Wrap("TPM2_PCR_Read", err)
		}
		if first {
			counter, first = rsp.PCRUpdateCounter, false
		} else if rsp.PCRUpdateCounter != counter {
			return nil, true, nil
		}
		got, err := selected(bank, rsp.PCRSelectionOut)
		if err != nil {
			return nil, false, err
		}
		if len(got) != len(rsp.PCRValues.Digests) {
			return nil, false, fmt.Errorf("TPM2_PCR_Read: %d PCRs selected but %d values returned", len(got), len(rsp.PCRValues.Digests))
		}
		if len(got) == 0 {
			return nil, false, fmt.Errorf("TPM2_PCR_Read: the TPM returned none of PCRs %v in bank %v (is the bank active?)", ask, bank)
		}
		for i, idx := range got {
			if !slices.Contains(ask, idx) {
				return nil, false, fmt.Errorf("TPM2_PCR_Read: the TPM returned PCR %d, which was not asked for", idx)
			}
			vals[idx] = rsp.PCRValues.Digests[i].Buffer
		}
		missing = slices.DeleteFunc(slices.Clone(missing), func(idx int) bool { _, ok := vals[idx]; return ok })
	}
	return vals, false, nil
}

// selected lists, in ascending order, the PCRs of bank that a selection
// returned by the TPM holds.
func selected(bank tpm2.TPMIAlgHash, sel tpm2.TPMLPCRSelection) ([]int, error) {
	var out []int
	for _, s := range sel.PCRSelections {
		if s.Hash != bank {
			if len(bitsSet(s.PCRSelect)) > 0 {
				return nil, fmt.Errorf("TPM2_PCR_Read: the TPM returned bank %v, asked for %v", s.Hash, bank)
			}
			continue
		}
		out = append(out, bitsSet(s.PCRSelect)...)
	}
	return out, nil
}

func bitsSet(bitmap []byte) []int {
	var out []int
	for i, b := range bitmap {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				out = append(out, i*8+bit)
			}
		}
	}
	return out
}

func pcrSelection(bank tpm2.TPMIAlgHash, pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      bank,
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// checkPCRs returns pcrs sorted without duplicates, refusing an empty list
// and indices outside 0..23.
func checkPCRs(pcrs []int) ([]int, error) {
	if len(pcrs) == 0 {
		return nil, fmt.Errorf("PCR read: no PCRs selected")
	}
	for _, p := range pcrs {
		if p < 0 || p > maxPCRIndex {
			return nil, fmt.Errorf("PCR %d: want 0..%d", p, maxPCRIndex)
		}
	}
	out := slices.Clone(pcrs)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// PCRExtend extends digest into PCR pcr of bank: value' = H(value || digest).
// digest must have the bank's size. PCRs are authorized with their empty
// password. Only PCRs 0..16 and 23 can be extended from locality 0
// (17..22 answer TPM_RC_LOCALITY).
func (t *TPM) PCRExtend(pcr int, bank tpm2.TPMIAlgHash, digest []byte) error {
	if pcr < 0 || pcr > maxPCRIndex {
		return fmt.Errorf("PCR %d: want 0..%d", pcr, maxPCRIndex)
	}
	h, err := bank.Hash()
	if err != nil {
		return fmt.Errorf("PCR bank %v: %w", bank, ErrUnsupported)
	}
	if len(digest) != h.Size() {
		return fmt.Errorf("PCR extend: digest of %d bytes, bank %v needs %d", len(digest), bank, h.Size())
	}
	_, err = (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: bank,
			Digest:  digest,
		}}},
	}).Execute(t)
	if err != nil {
		return Wrap("TPM2_PCR_Extend", err)
	}
	return nil
}

// PCRBanks returns the active PCR banks: those in which at least one PCR is
// allocated (TPM_CAP_PCRS). A provisioned swtpm has only sha256.
func (t *TPM) PCRBanks() ([]tpm2.TPMIAlgHash, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}).Execute(t)
	if err != nil {
		return nil, Wrap("TPM2_GetCapability", err)
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability: %w", err)
	}
	var out []tpm2.TPMIAlgHash
	for _, s := range sel.PCRSelections {
		if len(bitsSet(s.PCRSelect)) > 0 {
			out = append(out, s.Hash)
		}
	}
	return out, nil
}
