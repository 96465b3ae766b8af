package tpm

import (
	"github.com/google/go-tpm/tpm2"
)

// AKTemplate is the public area of a fleet attestation key (AK): ECC P-256
// restricted signing with ECDSA SHA-256, born in the TPM and never leaving
// it (fixedTPM, fixedParent, sensitiveDataOrigin), used with its
// authorization value (userWithAuth), no DA counting: a gate key's shape
// (GateTemplate). Restricted, it signs only structures the TPM produced
// (quotes, certifications), never a digest handed to it
// (docs/attestation.md).
func AKTemplate() tpm2.TPMTPublic { return GateTemplate() }

// Quote signs the PCRs sel selects with ak over nonce (TPM2_Quote): the
// TPMS_ATTEST bytes and the TPMT_SIGNATURE, marshalled. ak is authorized by
// its authValue in an HMAC session (salted to the pinned SRK when one is
// pinned; the operation's shared session when one is started): the value
// never crosses the bus.
func (t *TPM) Quote(ak Object, akAuth, nonce []byte, sel tpm2.TPMLPCRSelection) (attest, sig []byte, err error) {
	var rsp *tpm2.QuoteResponse
	quote := func(s tpm2.Session) (err error) {
		rsp, err = (tpm2.Quote{
			SignHandle:     ak.Auth(s),
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}).Execute(t)
		return Wrap("TPM2_Quote", err)
	}
	ok, err := t.withSharedAuth(ak, akAuth, 0, quote)
	if !ok {
		opts, perr := t.pinnedSalt()
		if perr != nil {
			return nil, nil, perr
		}
		err = quote(tpm2.HMAC(tpm2.TPMAlgSHA256, 16, append(opts, tpm2.Auth(akAuth))...))
	}
	if err != nil {
		return nil, nil, err
	}
	return rsp.Quoted.Bytes(), tpm2.Marshal(rsp.Signature), nil
}
