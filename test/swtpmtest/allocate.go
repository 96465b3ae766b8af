package swtpmtest

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// AllocatePCRs sends TPM2_PCR_Allocate (platform authorization, empty on
// swtpm; go-tpm has no struct for it) making every PCR of each bank in on
// active and of each bank in off inactive. It takes effect at the TPM's
// next reset, which the caller makes.
func AllocatePCRs(t testing.TB, tp transport.TPM, on, off []tpm2.TPMAlgID) {
	t.Helper()
	params := binary.BigEndian.AppendUint32(nil, uint32(len(on)+len(off)))
	for _, alg := range on {
		params = binary.BigEndian.AppendUint16(params, uint16(alg))
		params = append(params, 3, 0xff, 0xff, 0xff)
	}
	for _, alg := range off {
		params = binary.BigEndian.AppendUint16(params, uint16(alg))
		params = append(params, 3, 0, 0, 0)
	}
	auth := binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRSPW))
	auth = append(auth, 0, 0, 0, 0, 0) // empty nonce, attributes, empty password
	cmd := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(10+4+4+len(auth)+len(params)))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMCCPCRAllocate))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHPlatform))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(len(auth)))
	cmd = append(cmd, auth...)
	cmd = append(cmd, params...)
	rsp, err := tp.Send(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		t.Fatalf("TPM2_PCR_Allocate: rc 0x%x", rc)
	}
}
