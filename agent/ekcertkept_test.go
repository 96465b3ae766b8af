package agent

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// ekCertNVReads counts, on b, the commands that read an EK certificate
// index (NV_ReadPublic, NV_Read).
type ekCertNVReads struct {
	mu sync.Mutex
	n  int
}

func (c *ekCertNVReads) hook(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
	if readsEKCert(cmd) {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
	return nil, nil, false
}

func (c *ekCertNVReads) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// readsEKCert: cmd is an NV_ReadPublic or NV_Read of an EK certificate
// index (tpm.EKCertIndices).
func readsEKCert(cmd []byte) bool {
	if cc := swtpmtest.CommandCode(cmd); cc != tpm2.TPMCCNVReadPublic && cc != tpm2.TPMCCNVRead || len(cmd) < 14 {
		return false
	}
	h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
	for _, c := range tpm.EKCertIndices {
		if c.Handle == h {
			return true
		}
	}
	return false
}

// hideEKCertNV answers every read of an EK certificate index with
// TPM_RC_HANDLE: a TPM whose NV holds no EK certificate (or A1 hiding them).
func hideEKCertNV(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
	if readsEKCert(cmd) {
		return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true // handle 1
	}
	return nil, nil, false
}

// editIdentity is A4 editing the identity record in the state directory
// (the manifest's "identity" object).
func editIdentity(t *testing.T, ag *Agent, edit func(r *identityRecord)) {
	t.Helper()
	if err := ag.st.Update(context.Background(), func(tx *store.Tx) error {
		var r identityRecord
		if err := tx.Get(recIdentity, &r); err != nil {
			return err
		}
		edit(&r)
		return tx.Put(recIdentity, r)
	}); err != nil {
		t.Fatal(err)
	}
}

// nvEKCert is env's first EK certificate, read from its NV.
func nvEKCert(t *testing.T, env *swtpmtest.Env) []byte {
	t.Helper()
	der, err := env.TPM.ReadNV(tpm.EKCertIndices[0].Handle)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A duplicate's import takes the EK certificate first contact verified
// from the state, where it read it from the TPM's NV (issue 14: its
// NV_ReadPublic and NV_Read). A copy changed in the state (A4: another
// TPM's certificate, or bytes that are none) has another sum than the
// duplicate names and is not taken: the import reads NV as before and
// works, the key B's.
func TestDupImportTakesTheKeptEKCertificate(t *testing.T) {
	t.Parallel()
	for _, kept := range []string{"as first contact kept it", "changed in the state"} {
		t.Run(kept, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			_, pb, dup := dupForPeer(t, b)
			ctx := context.Background()
			want := 0
			if kept != "as first contact kept it" {
				want = 2
				editIdentity(t, pb, func(r *identityRecord) {
					if len(r.EKCert) == 0 {
						t.Fatal("first contact kept no certificate")
					}
					r.EKCert = []byte("A4's certificate")
				})
			}
			reads := &ekCertNVReads{}
			b.Set(reads.hook)
			_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
			b.Set(nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := reads.count(); n != want {
				t.Errorf("the import read an EK certificate's index %d times, want %d", n, want)
			}
			if _, err := pb.Sign(ctx, "k", make([]byte, 32), api.SignOptions{}); err != nil {
				t.Fatalf("the imported key signs: %v", err)
			}
			if _, err := pb.AuditVerify(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A TPM whose NV holds no EK certificate (many firmware TPMs: the
// certificate comes from the manufacturer's service), provisioned with the
// certificate given as a file: its peer identity names that certificate,
// and a duplicate made for it imports (before the state kept the
// certificate, both failed: no EK certificate in NV, or "another device").
func TestEKCertificateGivenAsAFile(t *testing.T) {
	t.Parallel()
	envA := swtpmtest.Start(t)
	b := &swtpmtest.Bus{}
	envB := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	der := nvEKCert(t, envB)
	b.Set(hideEKCertNV) // NV holds no certificate: its indices are not there
	var err error
	a := provisioned(t, envA)
	pb := testAgent(t, envB, &api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCert: der, EKCA: caBundle(t, envB)})
	peer, err := pb.PeerIdentity(ctx)
	if err != nil {
		t.Fatalf("peer identity with the certificate given as a file: %v", err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("import with the certificate given as a file: %v", err)
	}
	b.Set(nil)
	if _, err := pb.Sign(ctx, "k", make([]byte, 32), api.SignOptions{}); err != nil {
		t.Fatalf("the imported key signs: %v", err)
	}
}
