package tpm

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Command codes go-tpm v0.9.8 has no command struct for; provd sends them as raw
// commands through the same transport, so they are counted and serialized too.
const (
	ccSelfTest                  tpm2.TPMCC = 0x0143
	ccGetTestResult             tpm2.TPMCC = 0x017C
	ccNVExtend                  tpm2.TPMCC = 0x0136
	ccSetCommandCodeAuditStatus tpm2.TPMCC = 0x0140
	ccGetCommandAuditDigest     tpm2.TPMCC = 0x0133
	ccPolicyTemplate            tpm2.TPMCC = 0x0190
)

// rawCommand is a TPM command built by hand. Handles listed in authHandles are
// authorized with password sessions carrying the matching auth value (empty for
// the owner hierarchy and NV indices provd defines): these commands carry no
// secret, so no HMAC or encryption session is needed.
type rawCommand struct {
	cc      tpm2.TPMCC
	handles []tpm2.TPMHandle
	// auths holds one password per handle that needs authorization, in handle
	// order; nil means no authorization area (TPM_ST_NO_SESSIONS).
	auths [][]byte
	// policy, when set, authorizes the one handle that needs authorization
	// with this policy session instead (continueSession set: the caller
	// flushes it) unless endSession. The policy must not need an HMAC (no
	// PolicyAuthValue).
	policy     tpm2.TPMHandle
	endSession bool
	// session, when set, authorizes the one handle that needs
	// authorization as go-tpm would: its command HMAC over names (the
	// handles' names) and params, and its response HMAC checked
	// (ErrResponseForged when it fails).
	session tpm2.Session
	names   []tpm2.TPM2BName
	params  []byte
}

// run sends the command and returns the response parameters (after the
// parameterSize field for session responses). A non-success code is returned as
// tpm2.TPMRC so errors.Is works on it as on go-tpm's own commands.
func (c rawCommand) run(t *TPM) ([]byte, error) {
	tag := tpm2.TPMSTNoSessions
	body := make([]byte, 0, 64+len(c.params))
	for _, h := range c.handles {
		body = binary.BigEndian.AppendUint32(body, uint32(h))
	}
	switch {
	case c.session != nil:
		tag = tpm2.TPMSTSessions
		if err := c.session.NewNonceCaller(); err != nil {
			return nil, err
		}
		auth, err := c.session.Authorize(c.cc, c.params, nil, c.names, 0)
		if err != nil {
			return nil, err
		}
		area := tpm2.Marshal(auth)
		body = binary.BigEndian.AppendUint32(body, uint32(len(area)))
		body = append(body, area...)
	case c.policy != 0:
		tag = tpm2.TPMSTSessions
		var area []byte
		area = binary.BigEndian.AppendUint32(area, uint32(c.policy))
		area = binary.BigEndian.AppendUint16(area, 0) // nonceCaller
		if c.endSession {
			area = append(area, 0)
		} else {
			area = append(area, 1) // continueSession
		}
		area = binary.BigEndian.AppendUint16(area, 0) // no HMAC
		body = binary.BigEndian.AppendUint32(body, uint32(len(area)))
		body = append(body, area...)
	case c.auths != nil:
		tag = tpm2.TPMSTSessions
		var area []byte
		for _, pw := range c.auths {
			area = binary.BigEndian.AppendUint32(area, uint32(tpm2.TPMRSPW))
			area = binary.BigEndian.AppendUint16(area, 0) // nonce
			area = append(area, 0)                        // session attributes
			area = binary.BigEndian.AppendUint16(area, uint16(len(pw)))
			area = append(area, pw...)
		}
		body = binary.BigEndian.AppendUint32(body, uint32(len(area)))
		body = append(body, area...)
	}
	body = append(body, c.params...)
	cmd := make([]byte, 0, headerSize+len(body))
	cmd = binary.BigEndian.AppendUint16(cmd, uint16(tag))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(headerSize+len(body)))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(c.cc))
	cmd = append(cmd, body...)

	rsp, err := t.Send(cmd)
	if err != nil {
		return nil, err
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc != tpm2.TPMRCSuccess {
		return nil, rc
	}
	out := rsp[headerSize:]
	if tpm2.TPMST(binary.BigEndian.Uint16(rsp[0:2])) == tpm2.TPMSTSessions {
		if len(out) < 4 {
			return nil, fmt.Errorf("%w: short response to command 0x%x", ErrTransport, uint32(c.cc))
		}
		n := binary.BigEndian.Uint32(out[:4])
		if int(n) > len(out)-4 {
			return nil, fmt.Errorf("%w: bad parameter size in response to command 0x%x", ErrTransport, uint32(c.cc))
		}
		rest := out[4+n:]
		out = out[4 : 4+n]
		if c.session != nil {
			if err := c.validate(rest, out); err != nil {
				return nil, err
			}
		}
	} else if c.session != nil {
		return nil, fmt.Errorf("%w: response to command 0x%x without its session", ErrResponseForged, uint32(c.cc))
	}
	return out, nil
}

// validate checks the response session area rest of a successful command
// against its parameters.
func (c rawCommand) validate(rest, params []byte) error {
	auth, err := tpm2.Unmarshal[tpm2.TPMSAuthResponse](rest)
	if err != nil {
		return fmt.Errorf("%w: response session of command 0x%x: %v", ErrTransport, uint32(c.cc), err)
	}
	if len(tpm2.Marshal(auth)) != len(rest) {
		return fmt.Errorf("%w: trailing bytes after the response session of command 0x%x", ErrTransport, uint32(c.cc))
	}
	if err := c.session.Validate(tpm2.TPMRCSuccess, c.cc, params, c.names, 0, auth); err != nil {
		return fmt.Errorf("%w: command 0x%x: %v", ErrResponseForged, uint32(c.cc), err)
	}
	return nil
}

// SelfTest runs TPM2_SelfTest (fullTest YES when full: every algorithm,
// else NO: those not yet tested) and returns TPM2_GetTestResult's result,
// TPM_RC_SUCCESS when the TPM is not in failure mode. provd runs the full
// one at daemon start and with provd tpm selftest (Options.FullSelfTest).
func (t *TPM) SelfTest(full bool) (tpm2.TPMRC, error) {
	yes := byte(0)
	if full {
		yes = 1
	}
	if _, err := (rawCommand{cc: ccSelfTest, params: []byte{yes}}).run(t); err != nil {
		return 0, Wrap("TPM2_SelfTest", err)
	}
	return t.TestResult()
}

// TestResult is TPM2_GetTestResult's testResult: TPM_RC_SUCCESS when the
// TPM is not in failure mode, TPM_RC_TESTING while its tests run.
func (t *TPM) TestResult() (tpm2.TPMRC, error) {
	out, err := rawCommand{cc: ccGetTestResult}.run(t)
	if err != nil {
		return 0, Wrap("TPM2_GetTestResult", err)
	}
	// outData (TPM2B_MAX_BUFFER) then testResult (TPM_RC).
	if len(out) < 2 {
		return 0, fmt.Errorf("%w: short TPM2_GetTestResult response", ErrTransport)
	}
	n := int(binary.BigEndian.Uint16(out[:2]))
	if len(out) < 2+n+4 {
		return 0, fmt.Errorf("%w: short TPM2_GetTestResult response", ErrTransport)
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(out[2+n:])), nil
}
