package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// createSniffer is a passive A1: it keeps the (parent handle, outPrivate,
// outPublic) of every successful TPM2_Create. provd encrypts Create's
// *command* (the template and sensitive data) but not its response, so the
// TPM-wrapped blobs of the PK, D, keys and sealed objects cross in clear.
type createSniffer struct {
	next  transport.TPM
	mu    sync.Mutex
	blobs []capturedBlob
}

type capturedBlob struct {
	parent tpm2.TPMHandle
	blob   tpm.Blob
}

func (s *createSniffer) wrap(next transport.TPM) transport.TPM { s.next = next; return s }

func (s *createSniffer) Send(cmd []byte) ([]byte, error) {
	rsp, err := s.next.Send(cmd)
	if err != nil || len(rsp) < 14 || tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != tpm2.TPMCCCreate ||
		binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	off := 14 // header, parameterSize
	n := int(binary.BigEndian.Uint16(rsp[off:]))
	priv := rsp[off : off+2+n]
	off += 2 + n
	m := int(binary.BigEndian.Uint16(rsp[off:]))
	pub := rsp[off : off+2+m]
	b, uerr := tpm.UnmarshalBlob(append(append([]byte(nil), pub...), priv...))
	if uerr == nil {
		s.mu.Lock()
		s.blobs = append(s.blobs, capturedBlob{tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])), b})
		s.mu.Unlock()
	}
	return rsp, err
}

// A passive recording of provisioning and seal, plus any local process with
// TPM access later on a good boot (A2, no state directory): it loads the
// recorded PK under the SRK (empty auth) and satisfies PolicyPCR itself.
// Found by review: it then loaded the recorded sealed object and unsealed
// it. The PK's policy now ends in PolicyAuthValue, keyed by a secret only the
// state holds: loading anything under the PK fails in the TPM.
func TestPassiveRecordingGivesA2Nothing(t *testing.T) {
	sn := &createSniffer{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(sn.wrap))
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("provd review: sealed secret 0123456789")
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: secret}); err != nil {
		t.Fatal(err)
	}
	ag.Close()

	tp := env.TPM // A2: a plain connection, no state directory
	srk := tpm2.NamedHandle{Handle: tpm.SRKHandle}
	if rp, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(tp); err == nil {
		srk.Name = rp.Name
	}
	vals, err := tp.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(vals[7])
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(7)}}}
	policyPCR := func() (tpm2.Session, func() error) {
		s, closer, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (tpm2.PolicyPCR{PolicySession: s.Handle(), PcrDigest: tpm2.TPM2BDigest{Buffer: d[:]}, Pcrs: sel}).Execute(tp); err != nil {
			t.Fatal(err)
		}
		return s, closer
	}
	sn.mu.Lock()
	blobs := sn.blobs
	sn.mu.Unlock()
	loaded := 0
	var refused []error
	for _, pk := range blobs {
		if pk.parent != tpm.SRKHandle {
			continue
		}
		l, err := (tpm2.Load{ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate: pk.blob.Private, InPublic: pk.blob.Public}).Execute(tp)
		if err != nil {
			continue
		}
		loaded++
		for _, child := range blobs {
			if child.parent == tpm.SRKHandle {
				continue
			}
			s, closer := policyPCR()
			c, err := (tpm2.Load{ParentHandle: tpm2.AuthHandle{Handle: l.ObjectHandle, Name: l.Name, Auth: s},
				InPrivate: child.blob.Private, InPublic: child.blob.Public}).Execute(tp)
			closer()
			if err != nil {
				refused = append(refused, err)
				continue
			}
			s, closer = policyPCR()
			u, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: c.ObjectHandle, Name: c.Name, Auth: s}}).Execute(tp)
			closer()
			tp.Flush(c.ObjectHandle)
			if err == nil && bytes.Contains(u.OutData.Buffer, secret[:16]) {
				t.Errorf("from a passive bus recording, a local process unsealed %q", u.OutData.Buffer)
			}
		}
		tp.Flush(l.ObjectHandle)
	}
	// The attack was mounted: the recorded PK loaded, and every child load
	// under it was refused by the PK's policy.
	if loaded == 0 || len(refused) == 0 {
		t.Fatalf("PK blobs loaded %d, child loads refused %d: the attack was not mounted", loaded, len(refused))
	}
	for _, err := range refused {
		if !errors.Is(err, tpm2.TPMRCPolicyFail) && !errors.Is(err, tpm2.TPMRCBadAuth) && !errors.Is(err, tpm2.TPMRCAuthFail) {
			t.Errorf("a child load failed otherwise than by authorization: %v", err)
		}
	}
}
