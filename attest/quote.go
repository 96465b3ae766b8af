package attest

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// maxSelectBytes is the largest PCR bitmap accepted: 3 bytes name PCRs 0..23,
// all a PC Client TPM has (PCR_SELECT_MAX).
const maxSelectBytes = 3

// Quote is a verified TPM2_Quote.
type Quote struct {
	// Attest is the signed structure (clock, reset and restart counts,
	// firmware version, the signer's qualified name).
	Attest *tpm2.TPMSAttest
	// Selection lists the quoted PCRs, bank by bank, in the order the TPM
	// hashed them.
	Selection tpm2.TPMLPCRSelection
	// Digest is the TPM's hash of the selected PCR values, computed with
	// DigestAlg, the hash of the signing scheme.
	Digest    []byte
	DigestAlg tpm2.TPMIAlgHash
}

// VerifyQuote verifies the result of TPM2_Quote: attest is the TPMS_ATTEST
// the TPM signed (the contents of the TPM2B_ATTEST it returned, without the
// size: rsp.Quoted.Bytes() in go-tpm), sig the marshalled TPMT_SIGNATURE,
// nonce the qualifying data the caller sent. It checks what VerifyCertify
// checks of the signer, signature and nonce, and that the selection names
// at least one PCR, only PCRs 0..23 of approved banks (SHA-1 only with
// opts.AllowSHA1), each bank once, and every PCR of opts.RequirePCRs.
//
// The quote vouches for a digest, not for values: Quote.CheckPCRs tells
// whether claimed PCR values are the quoted ones.
func VerifyQuote(ak tpm2.TPMTPublic, attest, sig, nonce []byte, opts Options) (*Quote, error) {
	a, hash, err := verifyAttest(ak, attest, sig, nonce, tpm2.TPMSTAttestQuote)
	if err != nil {
		return nil, err
	}
	info, err := a.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvidence, err)
	}
	if err := checkSelection(info.PCRSelect, opts.AllowSHA1); err != nil {
		return nil, err
	}
	q := &Quote{Selection: info.PCRSelect}
	if len(q.Selected()) == 0 {
		return nil, fmt.Errorf("%w: the quote selects no PCR and vouches for nothing", ErrBadEvidence)
	}
	for bank, pcrs := range opts.RequirePCRs {
		if err := q.Covers(bank, pcrs...); err != nil {
			return nil, err
		}
	}
	h, _ := bankHash(hash, false) // verifyAttest approved it
	if len(info.PCRDigest.Buffer) != h.Size() {
		return nil, fmt.Errorf("%w: PCR digest of %d bytes, the scheme's hash has %d", ErrBadEvidence, len(info.PCRDigest.Buffer), h.Size())
	}
	return &Quote{Attest: a, Selection: info.PCRSelect, Digest: info.PCRDigest.Buffer, DigestAlg: hash}, nil
}

// checkSelection accepts a PCR selection of approved banks, each once, that
// names PCRs 0..23 only.
func checkSelection(sel tpm2.TPMLPCRSelection, allowSHA1 bool) error {
	seen := map[tpm2.TPMIAlgHash]bool{}
	for _, s := range sel.PCRSelections {
		if _, err := bankHash(s.Hash, allowSHA1); err != nil {
			return fmt.Errorf("quoted PCR bank (Options.AllowSHA1 admits SHA-1): %w", err)
		}
		if seen[s.Hash] {
			return fmt.Errorf("%w: PCR bank %s selected twice", ErrBadEvidence, catalog.HashName(s.Hash))
		}
		seen[s.Hash] = true
		if len(s.PCRSelect) > maxSelectBytes {
			return fmt.Errorf("%w: PCR bitmap of %d bytes (limit %d)", ErrBadEvidence, len(s.PCRSelect), maxSelectBytes)
		}
	}
	return nil
}

// Selected lists the quoted PCRs, bank by bank.
func (q *Quote) Selected() map[tpm2.TPMIAlgHash][]int {
	out := map[tpm2.TPMIAlgHash][]int{}
	for _, s := range q.Selection.PCRSelections {
		if pcrs := selectedPCRs(s.PCRSelect); len(pcrs) > 0 {
			out[s.Hash] = pcrs
		}
	}
	return out
}

// Covers tells whether the quote covers every one of pcrs in bank; a PCR it
// does not quote is ErrPCRMismatch, named.
func (q *Quote) Covers(bank tpm2.TPMIAlgHash, pcrs ...int) error {
	have := q.Selected()[bank]
	for _, i := range pcrs {
		if !slices.Contains(have, i) {
			return fmt.Errorf("%w: %s PCR %d is not quoted", ErrPCRMismatch, catalog.HashName(bank), i)
		}
	}
	return nil
}

// selectedPCRs lists the PCR indices a bitmap selects, ascending: PCR i is
// bit i%8 of byte i/8.
func selectedPCRs(bitmap []byte) []int {
	var out []int
	for i := 0; i < len(bitmap)*8; i++ {
		if bitmap[i/8]&(1<<(i%8)) != 0 {
			out = append(out, i)
		}
	}
	return out
}

// CheckPCRs reports whether values are the PCR values the quote covers: it
// hashes the selected values in selection order (bank by bank, PCRs
// ascending), as the TPM does, and compares with the quoted digest
// (ErrPCRMismatch). A selected PCR missing from values, or of the wrong size,
// is ErrBadEvidence. Values the quote does not select are ignored.
func (q *Quote) CheckPCRs(values PCRValues) error {
	h, err := bankHash(q.DigestAlg, false)
	if err != nil {
		return err
	}
	d := h.New()
	for _, s := range q.Selection.PCRSelections {
		bh, err := bankHash(s.Hash, true) // VerifyQuote decided whether SHA-1 is allowed
		if err != nil {
			return err
		}
		for _, i := range selectedPCRs(s.PCRSelect) {
			v, ok := values[s.Hash][i]
			if !ok {
				return fmt.Errorf("%w: no value for quoted PCR %d of bank %s", ErrBadEvidence, i, catalog.HashName(s.Hash))
			}
			if len(v) != bh.Size() {
				return fmt.Errorf("%w: PCR %d of bank %s has %d bytes, want %d", ErrBadEvidence, i, catalog.HashName(s.Hash), len(v), bh.Size())
			}
			d.Write(v)
		}
	}
	if !bytes.Equal(d.Sum(nil), q.Digest) {
		return fmt.Errorf("%w: the PCR values do not hash to the quoted digest", ErrPCRMismatch)
	}
	return nil
}

// PCRMismatch is one selected PCR whose replayed value differs from the
// quoted one. Replayed is nil when the replay has no value for it (the log
// lacks the bank).
type PCRMismatch struct {
	Bank             tpm2.TPMIAlgHash
	Index            int
	Quoted, Replayed []byte
}

// PCRMismatchError lists every selected PCR that differs. It unwraps to
// ErrPCRMismatch; errors.As gives the list.
type PCRMismatchError struct {
	Mismatches []PCRMismatch
}

func (e *PCRMismatchError) Error() string {
	var b strings.Builder
	b.WriteString("attest: replayed event log does not match the quoted PCRs:")
	for _, m := range e.Mismatches {
		fmt.Fprintf(&b, " %s PCR %d (quoted %x, replayed %x);", catalog.HashName(m.Bank), m.Index, m.Quoted, m.Replayed)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Unwrap makes errors.Is(err, ErrPCRMismatch) hold.
func (e *PCRMismatchError) Unwrap() error { return ErrPCRMismatch }

// ComparePCRs compares, for every PCR that sel selects (a verified quote's
// Selection) and for no other, the quoted value (checked with Quote.CheckPCRs) with the value
// an event-log replay gives. It returns nil when all are equal, else a
// *PCRMismatchError naming each PCR that differs. A selected PCR missing from
// quoted is ErrBadEvidence: CheckPCRs would have refused such values. What
// the replay says of a PCR the quote does not select is vouched for by
// nothing: require the PCRs a decision rests on (Options.RequirePCRs).
func ComparePCRs(sel tpm2.TPMLPCRSelection, quoted, replayed PCRValues) error {
	var diffs []PCRMismatch
	for _, s := range sel.PCRSelections {
		for _, i := range selectedPCRs(s.PCRSelect) {
			q, ok := quoted[s.Hash][i]
			if !ok {
				return fmt.Errorf("%w: no quoted value for PCR %d of bank %s", ErrBadEvidence, i, catalog.HashName(s.Hash))
			}
			r := replayed[s.Hash][i]
			if r == nil || !bytes.Equal(q, r) {
				diffs = append(diffs, PCRMismatch{Bank: s.Hash, Index: i, Quoted: q, Replayed: r})
			}
		}
	}
	if len(diffs) > 0 {
		return &PCRMismatchError{Mismatches: diffs}
	}
	return nil
}
