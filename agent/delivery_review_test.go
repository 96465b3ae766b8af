package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// importSniffer is a passive A1: it keeps the outPrivate of every
// successful TPM2_Import (ImportWrapped encrypts the command's first
// parameter only; the response crosses in clear, as the blob does again at
// every TPM2_Load under the EK).
type importSniffer struct {
	next  transport.TPM
	mu    sync.Mutex
	privs [][]byte
}

func (s *importSniffer) wrap(next transport.TPM) transport.TPM { s.next = next; return s }

func (s *importSniffer) Send(cmd []byte) ([]byte, error) {
	rsp, err := s.next.Send(cmd)
	if err != nil || len(rsp) < 16 || tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != tpm2.TPMCCImport || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	off := 14
	n := int(binary.BigEndian.Uint16(rsp[off:]))
	s.mu.Lock()
	s.privs = append(s.privs, append([]byte(nil), rsp[off+2:off+2+n]...))
	s.mu.Unlock()
	return rsp, err
}

// TestDeliveredSecretNeedsProvdsAK: every object provd makes ends
// its policy in PolicyAuthValue keyed by a value only the state holds
// (threat model: "Nothing but provd uses provd's objects, even while the
// PCRs are good"; TestPassiveRecordingGivesA2Nothing). A delivered secret's
// policy is PolicyPCR + PolicyCommandCode(Unseal) only, under the EK (whose
// policy is PolicySecret(endorsement), empty by default). A passive
// recording of attest fetch's TPM2_Import (A1), then any local process with
// TPM access on a good boot (A2, tss group, no state directory, not in the
// provd group) loads it under the EK and unseals the fleet's secret.
func TestDeliveredSecretNeedsProvdsAK(t *testing.T) {
	sn := &importSniffer{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(sn.wrap))
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	// attest enroll, then attest fetch, as the CLI does them.
	secret := []byte("fleet secret: the gateway's wifi psk")
	v, got := fleetFlow(t, env, ag, secret, func(name string, fn func() error) {
		t.Helper()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	})
	if !bytes.Equal(got, secret) {
		t.Fatalf("provd's own unseal: %q", got)
	}
	ag.Close()

	// A2: a plain TPM connection, nothing of the state, nothing of provd's.
	tp := env.TPM
	sn.mu.Lock()
	privs := sn.privs
	sn.mu.Unlock()
	if len(privs) == 0 {
		t.Fatal("no TPM2_Import recorded")
	}
	pub := v.Deliveries[0].Public // public area: no secret (also in the Load command)
	tmpl := tpm2.RSAEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
	ek, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer (tpm2.FlushContext{FlushHandle: ek.ObjectHandle}).Execute(tp)
	pubArea, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub)
	if err != nil {
		t.Fatal(err)
	}
	ld, err := (tpm2.Load{ParentHandle: tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name,
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, n tpm2.TPM2BNonce) error {
			_, err := (tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: n}).Execute(tp)
			return err
		})}, InPrivate: tpm2.TPM2BPrivate{Buffer: privs[len(privs)-1]}, InPublic: tpm2.New2B(*pubArea)}).Execute(tp)
	if err != nil {
		t.Fatalf("the recorded blob does not load (the test needs it loaded to try the unseal): %v", err)
	}
	defer (tpm2.FlushContext{FlushHandle: ld.ObjectHandle}).Execute(tp)
	bitmap := make([]byte, 3)
	for _, i := range v.Deliveries[0].PCRs["sha256"] {
		bitmap[i/8] |= 1 << (i % 8)
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}}
	u, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name,
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
			if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(tp); err != nil {
				return err
			}
			_, err := (tpm2.PolicyCommandCode{PolicySession: h, Code: tpm2.TPMCCUnseal}).Execute(tp)
			return err
		})}}).Execute(tp)
	if err == nil {
		t.Fatalf("from a passive recording of attest fetch's TPM2_Import, a local process with TPM access and no state unsealed the fleet's secret %q", u.OutData.Buffer)
	}
}
