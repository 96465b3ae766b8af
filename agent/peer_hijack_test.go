package agent

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// activationThief sits in B's handle space (A1 on the bus, or A2 sharing
// provd's TPM connection/handle space: the threat model has A2 flushing
// provd's objects). It never learns a secret of provd's. When provd sends
// TPM2_ActivateCredential, it first sends its own ActivateCredential that
// reuses provd's two policy sessions (T's: PolicySecret(PK) +
// PolicyCommandCode, already satisfied by provd; the EK's:
// PolicySecret(endorsement)). Both sessions are unsalted and unbound and
// contain no PolicyAuthValue: their HMAC key is empty, so the thief computes
// valid HMACs from the nonces it saw on the bus. No encryption session: the
// credential's secret comes back in the clear.
type activationThief struct {
	next   transport.TPM
	on     atomic.Bool
	mu     sync.Mutex
	nonces map[uint32][]byte
	stolen []byte
	err    error
}

func (x *activationThief) wrap(next transport.TPM) transport.TPM { x.next = next; return x }

func (x *activationThief) Send(cmd []byte) ([]byte, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	if x.on.Load() && cc == tpm2.TPMCCActivateCredential && x.stolen == nil {
		x.stolen, x.err = x.steal(cmd)
	}
	rsp, err := x.next.Send(cmd)
	if err == nil && cc == tpm2.TPMCCStartAuthSession && len(rsp) > 16 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
		h := binary.BigEndian.Uint32(rsp[10:14])
		n := int(binary.BigEndian.Uint16(rsp[14:16]))
		x.nonces[h] = append([]byte(nil), rsp[16:16+n]...)
	}
	return rsp, err
}

func (x *activationThief) steal(cmd []byte) ([]byte, error) {
	tH := binary.BigEndian.Uint32(cmd[10:14])
	ekH := binary.BigEndian.Uint32(cmd[14:18])
	off := 18
	authEnd := off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
	off += 4
	var sess []uint32
	for off < authEnd {
		sess = append(sess, binary.BigEndian.Uint32(cmd[off:]))
		off += 4
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
		off++
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
	}
	params := cmd[authEnd:] // credentialBlob, secret: EncryptOut only, so in the clear
	if len(sess) < 2 {
		return nil, fmt.Errorf("provd's ActivateCredential has %d sessions", len(sess))
	}
	name := func(h uint32) ([]byte, error) {
		rp, err := (tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(h)}).Execute(x.next)
		if err != nil {
			return nil, err
		}
		return rp.Name.Buffer, nil
	}
	tName, err := name(tH)
	if err != nil {
		return nil, err
	}
	ekName, err := name(ekH)
	if err != nil {
		return nil, err
	}
	ch := sha256.New()
	ch.Write(cmd[6:10])
	ch.Write(tName)
	ch.Write(ekName)
	ch.Write(params)
	cpHash := ch.Sum(nil)
	var auth []byte
	for _, h := range sess[:2] { // provd's T session, then its EK session
		nc := make([]byte, 16)
		rand.Read(nc)
		attrs := byte(0x01) // continueSession: provd flushes them itself
		m := hmac.New(sha256.New, nil)
		m.Write(cpHash)
		m.Write(nc)
		m.Write(x.nonces[h])
		m.Write([]byte{attrs})
		auth = binary.BigEndian.AppendUint32(auth, h)
		auth = binary.BigEndian.AppendUint16(auth, uint16(len(nc)))
		auth = append(auth, nc...)
		auth = append(auth, attrs)
		auth = binary.BigEndian.AppendUint16(auth, 32)
		auth = append(auth, m.Sum(nil)...)
	}
	var c []byte
	c = binary.BigEndian.AppendUint16(c, uint16(tpm2.TPMSTSessions))
	c = binary.BigEndian.AppendUint32(c, 0)
	c = binary.BigEndian.AppendUint32(c, uint32(tpm2.TPMCCActivateCredential))
	c = binary.BigEndian.AppendUint32(c, tH)
	c = binary.BigEndian.AppendUint32(c, ekH)
	c = binary.BigEndian.AppendUint32(c, uint32(len(auth)))
	c = append(c, auth...)
	c = append(c, params...)
	binary.BigEndian.PutUint32(c[2:6], uint32(len(c)))
	rsp, err := x.next.Send(c)
	if err != nil {
		return nil, err
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return nil, fmt.Errorf("the TPM refused the thief's ActivateCredential: %#x", rc)
	}
	n := int(binary.BigEndian.Uint16(rsp[14:16])) // after parameterSize
	return append([]byte(nil), rsp[16:16+n]...), nil
}

// TestActivationSessionIsProvdsOnly: something in B's handle space (A1 on
// the bus, or A2 sharing provd's connection) sends its own
// TPM2_ActivateCredential through the two policy sessions provd satisfied
// (T's: PolicySecret(PK) + PolicyCommandCode; the EK's), with HMACs it
// computes from the nonces it saw. Found by the third review, when those
// sessions were unsalted: the thief read the inner key and the moved key's
// authValue, then used the key. Salted to the SRK, their HMAC key is the
// salt's, which the thief cannot compute: the TPM refuses the thief
// (TPM_RC_BAD_AUTH), and provd's own activation and import succeed.
func TestActivationSessionIsProvdsOnly(t *testing.T) {
	t.Parallel()
	x := &activationThief{nonces: map[uint32][]byte{}}
	ctx := context.Background()
	_, b, a, _, dup := movedKey(t, swtpmtest.WithWrap(x.wrap))
	x.on.Store(true)
	_, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	x.on.Store(false)
	if x.stolen != nil || x.err == nil {
		t.Fatalf("the thief's activation went through (%d bytes)", len(x.stolen))
	}
	if !errors.Is(x.err, tpm2.TPMRCBadAuth) {
		t.Logf("the thief's activation: %v", x.err)
	}
	if err != nil {
		t.Fatalf("provd's import with the thief on the bus: %v", err)
	}
	signVerifies(t, a, b, "k")
}
