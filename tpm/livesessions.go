package tpm

import (
	"encoding/binary"
	"errors"

	"github.com/google/go-tpm/tpm2"
)

// maxSessions is the number of sessions provd lets its connection hold at
// once: the TPM's loaded sessions (TPM_PT_HR_LOADED_MIN, 3 on swtpm and
// the chips we know) and the kernel resource manager's sessions per
// connection (3 on /dev/tpmrm0, where a fourth fails the device's write
// and flushes the connection's every session).
const maxSessions = 3

// liveSessions is the set of sessions provd's connection holds, as the
// commands and answers that pass through counting show it: a session
// enters with the StartAuthSession that made it and leaves with its
// FlushContext, or with a command that succeeded with continueSession
// clear in it (the TPM ends it then). It serves one decision: whether the
// operation's shared session may stay started beside one more (Send).
//
// It errs towards counting a session that is gone, never towards missing
// one that is loaded: a session leaves only on the TPM's word that it has
// (a flush done, or refused because nothing is at the handle; a command
// done with continueSession clear, in a command whose handles it knows),
// and nothing is forgotten when the connection is lost (swtpm keeps its
// sessions across a reconnect) or the TPM migrates; only a Startup that
// provd sent (the TPM was reset) empties it. Too many only flushes the
// shared session where it could have stayed. It serves a second: whether
// a session kept between Shares, which may have been lost unseen, shares
// its slot with another the connection holds (slotTaken).
type liveSessions map[tpm2.TPMHandle]bool

// slotTaken reports whether l holds a session other than h in h's slot:
// the same number below the handle's type byte (swtpm, as the reference
// code, numbers HMAC and policy sessions from one set of slots).
func (l liveSessions) slotTaken(h tpm2.TPMHandle) bool {
	for o := range l {
		if o != h && o&0x00ffffff == h&0x00ffffff {
			return true
		}
	}
	return false
}

// note updates the set from a command and the TPM's final answer to it.
func (l liveSessions) note(cmd, rsp []byte) {
	if len(cmd) < headerSize || len(rsp) < headerSize {
		return
	}
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	switch cc {
	case tpm2.TPMCCStartAuthSession:
		if rc == tpm2.TPMRCSuccess && len(rsp) >= headerSize+4 {
			if h := tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[headerSize:])); isSession(h) {
				l[h] = true
			}
		}
		return
	case tpm2.TPMCCFlushContext:
		if len(cmd) >= headerSize+4 {
			h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[headerSize:]))
			if rc == tpm2.TPMRCSuccess || errors.Is(rc, tpm2.TPMRCHandle) {
				delete(l, h)
			}
		}
		return
	}
	if rc != tpm2.TPMRCSuccess || tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTSessions {
		return
	}
	n, ok := commandHandles[cc]
	if !ok {
		return
	}
	off := headerSize + 4*n
	if len(cmd) < off+4 {
		return
	}
	end := off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
	off += 4
	if end > len(cmd) || end < off {
		return
	}
	var ended []tpm2.TPMHandle
	for off < end {
		// TPMS_AUTH_COMMAND: sessionHandle, nonce, sessionAttributes, hmac.
		if end < off+6 {
			return
		}
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[off:]))
		off += 4
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
		if end < off+3 {
			return
		}
		attrs := cmd[off]
		off++
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
		if off > end {
			return
		}
		if isSession(h) && attrs&1 == 0 { // continueSession clear
			ended = append(ended, h)
		}
	}
	for _, h := range ended {
		delete(l, h)
	}
}

// isSession: h is an HMAC or a policy session's handle.
func isSession(h tpm2.TPMHandle) bool { return h>>24 == 0x02 || h>>24 == 0x03 }

// commandHandles is the number of handles in the handle area of each
// command provd sends with sessions (TPM 2.0 Part 3); a command not listed
// ends no session as far as liveSessions knows.
var commandHandles = map[tpm2.TPMCC]int{
	tpm2.TPMCCGetRandom: 0, tpm2.TPMCCGetCapability: 0, tpm2.TPMCCPCRRead: 0, tpm2.TPMCCLoadExternal: 0, tpm2.TPMCCHash: 0,
	tpm2.TPMCCLoad: 1, tpm2.TPMCCCreate: 1, tpm2.TPMCCCreateLoaded: 1, tpm2.TPMCCCreatePrimary: 1, tpm2.TPMCCSign: 1,
	tpm2.TPMCCQuote: 1, tpm2.TPMCCUnseal: 1, tpm2.TPMCCReadPublic: 1, tpm2.TPMCCNVReadPublic: 1, tpm2.TPMCCNVDefineSpace: 1,
	tpm2.TPMCCHierarchyChanegAuth: 1, tpm2.TPMCCPCRExtend: 1, tpm2.TPMCCPCRReset: 1, tpm2.TPMCCImport: 1, tpm2.TPMCCHMAC: 1,
	tpm2.TPMCCHMACStart: 1, tpm2.TPMCCSequenceUpdate: 1, tpm2.TPMCCSequenceComplete: 1, tpm2.TPMCCEncryptDecrypt2: 1,
	tpm2.TPMCCECDHZGen: 1, tpm2.TPMCCRSADecrypt: 1, tpm2.TPMCCVerifySignature: 1,
	tpm2.TPMCCNVRead: 2, tpm2.TPMCCNVWrite: 2, tpm2.TPMCCNVIncrement: 2, tpm2.TPMCCNVExtend: 2, tpm2.TPMCCNVWriteLock: 2,
	tpm2.TPMCCNVUndefineSpace: 2, tpm2.TPMCCEvictControl: 2, tpm2.TPMCCPolicySecret: 2, tpm2.TPMCCDuplicate: 2,
	tpm2.TPMCCActivateCredential: 2, tpm2.TPMCCCertify: 2, tpm2.TPMCCObjectChangeAuth: 2,
	tpm2.TPMCCPolicyNV: 3, tpm2.TPMCCPolicyAuthorizeNV: 3,
}
