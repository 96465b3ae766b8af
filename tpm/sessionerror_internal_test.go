package tpm

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// An error that names an authorization session answers only a command that
// carried one; sent with none, it is the bus's (sessionErrorWithoutSession).
// Handle and parameter errors, format-zero codes and warnings pass, as does
// any error to a command with sessions.
func TestSessionErrorWithoutSession(t *testing.T) {
	cmd := func(tag tpm2.TPMISTCommandTag) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(tag))
		b = binary.BigEndian.AppendUint32(b, 14)
		b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCPolicyCommandCode))
		return binary.BigEndian.AppendUint32(b, 0x03000000)
	}
	for _, c := range []struct {
		rc     tpm2.TPMRC
		tag    tpm2.TPMISTCommandTag
		forged bool
	}{
		{0x9a2, tpm2.TPMSTNoSessions, true},  // BAD_AUTH, session 1
		{0xfa2, tpm2.TPMSTNoSessions, true},  // BAD_AUTH, session 7
		{0x98e, tpm2.TPMSTNoSessions, true},  // AUTH_FAIL, session 1
		{0x9a2, tpm2.TPMSTSessions, false},   // with a session: the TPM's word
		{0x18b, tpm2.TPMSTNoSessions, false}, // HANDLE, handle 1
		{0x1c4, tpm2.TPMSTNoSessions, false}, // VALUE, parameter 1
		{0x922, tpm2.TPMSTNoSessions, false}, // RETRY: a warning
		{0x101, tpm2.TPMSTNoSessions, false}, // FAILURE: format zero
		{0x000, tpm2.TPMSTNoSessions, false}, // success
		{0x9c4, tpm2.TPMSTNoSessions, false}, // VALUE with P and bit 11: parameter 9, not a session
	} {
		err := sessionErrorWithoutSession(cmd(c.tag), c.rc)
		if got := errors.Is(err, ErrResponseForged); got != c.forged {
			t.Errorf("rc 0x%03x, tag 0x%x: forged %v, want %v (%v)", uint32(c.rc), uint16(c.tag), got, c.forged, err)
		}
	}
}
