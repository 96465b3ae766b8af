package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// ccLog records the command code of every command sent.
type ccLog struct {
	next transport.TPM
	mu   sync.Mutex
	ccs  []tpm2.TPMCC
}

func (l *ccLog) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 10 {
		l.mu.Lock()
		l.ccs = append(l.ccs, tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])))
		l.mu.Unlock()
	}
	return l.next.Send(cmd)
}

// take returns the command codes sent since the last take.
func (l *ccLog) take() []tpm2.TPMCC {
	l.mu.Lock()
	defer l.mu.Unlock()
	ccs := l.ccs
	l.ccs = nil
	return ccs
}

// A provisioned state that pins no TPM identity refuses, before any TPM
// session or object, every operation that loads, creates or uses keys or
// secrets (exit 15, naming the way out), and keeps the ones that carry no
// secret: status (which says why and skips the policy check, as that loads
// the PK), tpm info and identity, the audit trail, key listing and public
// parts, blob export, delete, zeroize. Every api.Service method is in one
// of the two lists: a new one fails this test until it is placed.
func TestUnpinnedStateRefusesSecrets(t *testing.T) {
	log := &ccLog{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { log.next = next; return log }))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCA: caBundle(t, env)}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []api.CreateRequest{{Name: "sig", Type: "ecc-p256"}, {Name: "dh", Type: "ecc-p256", Usage: "ecdh"}} {
		if _, err := a.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := a.Seal(ctx, api.SealRequest{Data: []byte("a secret")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "aes", Label: "data", Type: "aes-256"}); err != nil {
		t.Fatal(err)
	}
	envelope, err := a.EncryptData(ctx, "aes", []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.Delete(recIdentity) }); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	env.Reopen()
	a, err = New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{7: make([]byte, 32)}}, 1, "", true)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := sp.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	peerDH, _ := peer.PublicKey.ECDH()
	digest := sha256.Sum256([]byte("m"))
	derive := api.DeriveRequest{Name: "d", Label: "l", Type: "ecc-p256"}
	derive.Approval = officertest.Approve(t, st.PolicyDigest, derive)

	refused := map[string]func() error{
		"Seal":   func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); return err },
		"Unseal": func() error { _, err := a.Unseal(ctx, blob); return err },
		"CreateKey": func() error {
			_, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"})
			return err
		},
		"DeriveKey":     func() error { _, err := a.DeriveKey(ctx, derive); return err },
		"Sign":          func() error { _, err := a.Sign(ctx, "sig", digest[:], api.SignOptions{}); return err },
		"HMAC":          func() error { _, err := a.HMAC(ctx, "sig", []byte("x")); return err },
		"ECDH":          func() error { _, err := a.ECDH(ctx, "dh", peerDH); return err },
		"Decrypt":       func() error { _, err := a.Decrypt(ctx, "sig", []byte("x"), crypto.SHA256); return err },
		"EncryptData":   func() error { _, err := a.EncryptData(ctx, "aes", []byte("x")); return err },
		"DecryptData":   func() error { _, err := a.DecryptData(ctx, "aes", envelope); return err },
		"InstallPolicy": func() error { _, err := a.InstallPolicy(ctx, signed); return err },
		"ShowPolicy":    func() error { _, err := a.ShowPolicy(ctx); return err },
		"ImportKEK": func() error {
			c := [][]byte{bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)}
			req := api.KEKImportRequest{Name: "kek", Components: c}
			for _, comp := range append(c, bytes.Repeat([]byte{3}, 16)) {
				k, _ := keywrap.KCV(comp)
				req.KCVs = append(req.KCVs, hex.EncodeToString(k[:]))
			}
			req.KCV, req.KCVs = req.KCVs[2], req.KCVs[:2]
			_, err := a.ImportKEK(ctx, req)
			return err
		},
		"ExportKey": func() error {
			_, err := a.ExportKey(ctx, api.KeyExportRequest{Name: "sig", KEK: "kek"})
			return err
		},
		"ImportKey": func() error {
			_, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "k3", KEK: "kek", Wrapped: make([]byte, 24)})
			return err
		},
		"PeerIdentity": func() error { _, err := a.PeerIdentity(ctx); return err },
		"DupExport": func() error {
			_, err := a.DupExport(ctx, api.DupExportRequest{Name: "sig"})
			return err
		},
		"DupImport": func() error {
			_, err := a.DupImport(ctx, api.DupImportRequest{Name: "k4", Dup: api.DupFile{Format: api.DupFormat}})
			return err
		},
		"PeerProve": func() error {
			_, err := a.PeerProve(ctx, api.PeerChallenge{Format: api.ChallengeFormat})
			return err
		},
		"PKExport": func() error {
			_, err := a.PKExport(ctx, api.PKExportRequest{})
			return err
		},
		"ProvisionFrom": func() error {
			_, err := a.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: api.DupFile{Format: api.DupFormat, Type: api.DupTypePK}})
			return err
		},
		"AttestIdentity": func() error { _, err := a.AttestIdentity(ctx); return err },
		"AttestActivate": func() error {
			_, err := a.AttestActivate(ctx, fleetapi.Enrollment{DeviceID: "d"})
			return err
		},
		"AttestQuote": func() error {
			_, err := a.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: make([]byte, 32), PCRs: map[string][]int{"sha256": {0}}})
			return err
		},
		"AttestInstall": func() error {
			_, err := a.AttestInstall(ctx, api.AttestInstallRequest{Deliveries: []fleetapi.Delivery{{Name: "x"}}})
			return err
		},
		"AttestSecret": func() error {
			_, err := a.AttestSecret(ctx, api.AttestSecretRequest{Name: "x"})
			return err
		},
		"AttestSign": func() error {
			_, err := a.AttestSign(ctx, "x", make([]byte, 32), api.SignOptions{})
			return err
		},
		"ImportKeyBlob": func() error {
			pemData, err := a.ExportKeyBlob(ctx, "sig")
			if err != nil {
				return err
			}
			_, err = a.ImportKeyBlob(ctx, "sig2", pemData)
			return err
		},
	}
	// What a refused operation may send: reads of NV and what writing its
	// audit record sends (the gated anchor: the gate's load and policy
	// session, NV_Extend), measured here on a record of its own.
	mayAsk := map[tpm2.TPMCC]bool{tpm2.TPMCCNVReadPublic: true, tpm2.TPMCCNVRead: true, tpm2.TPMCCNVExtend: true}
	log.take()
	if err := a.RecordRefusal(ctx, "probe", "the audit record's own commands"); err != nil {
		t.Fatal(err)
	}
	for _, cc := range log.take() {
		mayAsk[cc] = true
	}
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCCreate, tpm2.TPMCCCreateLoaded, tpm2.TPMCCUnseal, tpm2.TPMCCSign, tpm2.TPMCCECDHZGen, tpm2.TPMCCRSADecrypt, tpm2.TPMCCEncryptDecrypt2, tpm2.TPMCCHMAC} {
		if mayAsk[cc] {
			t.Fatalf("an audit record sends %v", cc)
		}
	}
	for name, op := range refused {
		err := op()
		if !errors.Is(err, errNotPinned) || !errors.Is(err, api.ErrUntrustedTPM) || api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("%s on the unpinned state: %v (exit %d), want not pinned (15)", name, err, api.ExitCode(err))
		} else if !strings.Contains(err.Error(), "provision --force") {
			t.Errorf("%s: %v does not name the way out", name, err)
		}
		for _, cc := range log.take() {
			if !mayAsk[cc] {
				t.Errorf("%s on the unpinned state sent %v to the TPM before refusing", name, cc)
			}
		}
	}

	allowed := map[string]func() error{
		"Status": func() error {
			s, err := a.Status(ctx)
			if err == nil && (!s.Provisioned || s.TPMTrust != "" || s.Policy != nil || !strings.Contains(strings.Join(s.Warnings, " "), "not pinned")) {
				return errors.New("status does not say the identity is not pinned")
			}
			return err
		},
		"TPMInfo":     func() error { _, err := a.TPMInfo(ctx); return err },
		"TPMIdentity": func() error { _, err := a.TPMIdentity(ctx, api.IdentityRequest{EKCA: caBundle(t, env)}); return err },
		"AuditRecords": func() error {
			_, err := a.AuditRecords(ctx)
			return err
		},
		"AuditVerify":   func() error { _, err := a.AuditVerify(ctx); return err },
		"AuditRepair":   func() error { _, err := a.AuditRepair(ctx, false); return err },
		"ListKeys":      func() error { _, err := a.ListKeys(ctx); return err },
		"KeyPublic":     func() error { _, _, err := a.KeyPublic(ctx, "sig"); return err },
		"ExportKeyBlob": func() error { _, err := a.ExportKeyBlob(ctx, "sig"); return err },
		"DeleteKey":     func() error { return a.DeleteKey(ctx, "sig") },
		// The endpoint's verdict, kept for status: no TPM, no secret.
		"AttestRecord": func() error { _, err := a.AttestRecord(ctx, api.AttestVerdict{DeviceID: "d"}); return err },
		"Zeroize": func() error {
			// No SRK pinned: nothing the bus cannot have chosen to salt
			// the witness to, and the result says so.
			res, err := a.Zeroize(ctx, api.ZeroizeOptions{})
			if err == nil && res.Authenticated {
				return errors.New("zeroize of an unpinned state says the TPM authenticated its result")
			}
			return err
		},
		// The way out: agent.TestFullInterposer ("provision --force is the
		// way out"), cli.TestUnpinnedStateWayOut.
		"Provision": nil,
		// The audit trail's own way out (agent.TestStrayWritesAndTheWayOut):
		// it carries no secret; its gate is made again through the pinned
		// SRK at the next provisioning (TestGateRemadeThroughThePinnedSRK).
		"AuditReanchor": nil,
	}
	for _, name := range []string{"Status", "TPMInfo", "TPMIdentity", "AuditRecords", "AuditVerify", "AuditRepair",
		"ListKeys", "KeyPublic", "ExportKeyBlob", "DeleteKey", "Zeroize", "AttestRecord"} {
		if err := allowed[name](); err != nil {
			t.Errorf("%s on the unpinned state: %v", name, err)
		}
	}

	svc := reflect.TypeFor[api.Service]()
	for i := range svc.NumMethod() {
		m := svc.Method(i).Name
		_, r := refused[m]
		_, ok := allowed[m]
		if r == ok {
			t.Errorf("api.Service.%s is in neither or both lists of this test: decide whether an unpinned state refuses it", m)
		}
	}
}
