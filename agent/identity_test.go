package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// caBundle is the harness's EK CA, as an operator passes it to --ek-ca.
func caBundle(t testing.TB, env *swtpmtest.Env) []byte {
	t.Helper()
	return env.CAPEM()
}

// foreignCA is a CA that vouches for nothing of this TPM's.
func foreignCA(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "someone else's TPM CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// First contact: the swtpm's EK certificate verifies against its CA, and the
// SRK name the TPM states through the EK-salted session is the SRK's.
// Without the CA, or with another, the TPM is untrusted (exit 15) unless
// trust on first use is asked for, and then it says so.
func TestTPMIdentity(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}) // the SRK is persistent
	id, err := a.TPMIdentity(ctx, api.IdentityRequest{EKCA: caBundle(t, env)})
	if err != nil {
		t.Fatal(err)
	}
	srk, err := env.TPM.ReadPublic(tpm.SRKHandle)
	if err != nil {
		t.Fatal(err)
	}
	if id.Trust != api.TrustManufacturer || id.EKKey != "RSA 2048" || id.EKCertSource != "nv 0x01c00002" ||
		id.SRKName != hex.EncodeToString(srk.Name.Buffer) || !id.SRKPersistent || id.Manufacturer == "" {
		t.Errorf("identity %+v", id)
	}

	for name, req := range map[string]api.IdentityRequest{
		"no CA":      {},
		"foreign CA": {EKCA: foreignCA(t)},
		"foreign CA, even with trust on first use": {EKCA: foreignCA(t), TrustOnFirstUse: true},
	} {
		_, err := a.TPMIdentity(ctx, req)
		if !errors.Is(err, api.ErrUntrustedTPM) || api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("%s: %v (exit %d), want untrusted (15)", name, err, api.ExitCode(err))
		}
	}
	tofu, err := a.TPMIdentity(ctx, api.IdentityRequest{TrustOnFirstUse: true})
	if err != nil || tofu.Trust != api.TrustOnFirstUse || tofu.SRKName != id.SRKName {
		t.Errorf("trust on first use: %+v %v", tofu, err)
	}

	// A certificate given as a file (PEM), as for a TPM that keeps none.
	der, err := env.TPM.ReadNV(0x01c00002)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tpm.ParseEKCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	file, err := a.TPMIdentity(ctx, api.IdentityRequest{EKCA: caBundle(t, env),
		EKCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})})
	if err != nil || file.EKCertSource != "file" || file.SRKName != id.SRKName {
		t.Errorf("from a file: %+v %v", file, err)
	}
}

// The EK certificate of another TPM (RSA 2048 and ECC P-384), verified by
// that TPM's CA: the key at this TPM's EK handle is not the certified key,
// so the identity is refused before any session (ErrIdentityMismatch). An
// interposer that answers ReadPublic of the EK handle with the certified
// key to get past that check gains nothing: the salt is encrypted to a key
// this TPM does not hold, so the TPM cannot decrypt it (RSA: TPM_RC_VALUE at
// StartAuthSession) or derives another session key and refuses provd's
// command HMAC (ECC: TPM_RC_BAD_AUTH, forged). Either way no identity is
// reported (untrusted, exit 15).
func TestTPMIdentityOtherTPMsCertificate(t *testing.T) {
	t.Parallel()
	var lie atomic.Bool
	var liar ekLiar
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		liar.next, liar.on = next, &lie
		return &liar
	}))
	other := swtpmtest.Start(t) // a distinct TPM (the harness manufactures it afresh)
	a := testAgent(t, env, nil)
	for _, c := range []struct {
		nv         tpm2.TPMHandle
		key        string
		tpmRefusal error
	}{
		{0x01c00002, "RSA 2048", tpm2.TPMRCValue},
		{0x01c00016, "ECC P-384", tpm.ErrResponseForged},
	} {
		der, err := other.TPM.ReadNV(c.nv)
		if err != nil {
			t.Fatal(err)
		}
		req := api.IdentityRequest{EKCert: der, EKCA: caBundle(t, other)}
		_, err = a.TPMIdentity(context.Background(), req)
		t.Logf("%s, an honest bus: %v", c.key, err)
		if !errors.Is(err, api.ErrUntrustedTPM) || !errors.Is(err, tpm.ErrIdentityMismatch) || api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("%s: identity with another TPM's EK certificate: %v (exit %d), want untrusted: not the certified key (15)", c.key, err, api.ExitCode(err))
		}

		cert, err := tpm.ParseEKCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		handle, pub, _, _, err := ekPublic(cert.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		liar.handle, liar.pub = handle, pub
		lie.Store(true)
		_, err = a.TPMIdentity(context.Background(), req)
		lie.Store(false)
		t.Logf("%s, the bus claiming the certified key: %v", c.key, err)
		if !errors.Is(err, api.ErrUntrustedTPM) || !errors.Is(err, c.tpmRefusal) || api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("%s: identity with another TPM's EK certificate, the bus claiming its key: %v (exit %d), want untrusted, %v (15)",
				c.key, err, api.ExitCode(err), c.tpmRefusal)
		}
		if liar.answered == 0 {
			t.Errorf("%s: the interposer never answered", c.key)
		}
		liar.answered = 0
	}
}

// ekLiar answers TPM2_ReadPublic of handle with pub (and its name) while on
// is set, as an interposer that claims the certified key is the TPM's EK.
type ekLiar struct {
	next     transport.TPM
	on       *atomic.Bool
	handle   tpm2.TPMHandle
	pub      tpm2.TPMTPublic
	answered int
}

func (l *ekLiar) Send(cmd []byte) ([]byte, error) {
	rsp, err := l.next.Send(cmd)
	if err != nil || !l.on.Load() || len(cmd) < 14 || len(rsp) < 10 ||
		tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != tpm2.TPMCCReadPublic ||
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != l.handle || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	name, err := tpm2.ObjectName(&l.pub)
	if err != nil {
		return nil, err
	}
	l.answered++
	out := append([]byte(nil), rsp[:10]...)
	out = append(out, tpm2.Marshal(tpm2.New2B(l.pub))...)
	out = append(out, tpm2.Marshal(*name)...)
	out = append(out, tpm2.Marshal(*name)...) // qualifiedName: provd does not read it
	binary.BigEndian.PutUint32(out[2:6], uint32(len(out)))
	return out, nil
}

// First contact through the ECC P-384 EK (TCG high-range template H-3,
// certificate at NV 0x01c00016, persistent at 0x81010016, as swtpm_setup
// makes it): given as a file, the CA verifies it and the SRK comes back
// through the session salted to the certificate's point, the same SRK as
// through the RSA EK. With no RSA or P-256 certificate in NV the search
// finds the P-384 one; with no persistent P-384 EK provd creates it from
// H-3 and flushes it. Provisioning through it pins the TPM.
func TestTPMIdentityP384(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator() // removes an EK certificate and evicts the EK
	ctx := context.Background()
	ekca := caBundle(t, env)
	a := testAgent(t, env, nil)
	rsa, err := a.TPMIdentity(ctx, api.IdentityRequest{EKCA: ekca})
	if err != nil || rsa.EKKey != "RSA 2048" || rsa.EKCertSource != "nv 0x01c00002" {
		t.Fatalf("with RSA and P-384 certificates in NV: %+v %v, want the RSA one", rsa, err)
	}
	der, err := env.TPM.ReadNV(0x01c00016)
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.TPMIdentity(ctx, api.IdentityRequest{EKCA: ekca, EKCert: der})
	if err != nil {
		t.Fatal(err)
	}
	if id.Trust != api.TrustManufacturer || id.EKKey != "ECC P-384" || id.EKCertSource != "file" || id.SRKName != rsa.SRKName {
		t.Errorf("through the P-384 EK: %+v; want manufacturer trust and SRK %s", id, rsa.SRKName)
	}

	// Only the P-384 certificate in NV: the platform removes the RSA one.
	nv, err := (tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(0x01c00002)}).Execute(env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHPlatform, NVIndex: tpm2.NamedHandle{Handle: 0x01c00002, Name: nv.NVName}}).Execute(env.TPM); err != nil {
		t.Fatal(err)
	}
	id, err = a.TPMIdentity(ctx, api.IdentityRequest{EKCA: ekca})
	if err != nil || id.EKKey != "ECC P-384" || id.EKCertSource != "nv 0x01c00016" || id.SRKName != rsa.SRKName {
		t.Errorf("with only the P-384 certificate in NV: %+v %v", id, err)
	}

	// No persistent P-384 EK: created from H-3 (the leak check at the end
	// shows it was flushed).
	ek, err := env.TPM.ReadPublic(tpm.ECCP384EKHandle)
	if err != nil {
		t.Fatal(err)
	}
	evicted := false
	for _, auth := range []tpm2.TPMHandle{tpm2.TPMRHOwner, tpm2.TPMRHPlatform} {
		_, err := (tpm2.EvictControl{Auth: auth, ObjectHandle: ek.Named(), PersistentHandle: tpm.ECCP384EKHandle}).Execute(env.TPM)
		if evicted = err == nil; evicted {
			break
		}
	}
	if !evicted {
		t.Fatalf("could not evict the P-384 EK")
	}
	id, err = a.TPMIdentity(ctx, api.IdentityRequest{EKCA: ekca})
	if err != nil || id.EKKey != "ECC P-384" || id.SRKName != rsa.SRKName {
		t.Errorf("with the P-384 EK created from H-3: %+v %v", id, err)
	}

	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCA: ekca})
	if err != nil || res.TPMTrust != api.TrustManufacturer {
		t.Fatalf("provision through the P-384 EK: %+v %v", res, err)
	}
	if st, err := a.Status(ctx); err != nil || st.TPMTrust != api.TrustManufacturer || len(st.Warnings) > 2 {
		t.Errorf("status after provisioning through the P-384 EK: %+v %v", st, err)
	}
}

// An interposer changes the SRK public area in the CreatePrimary response
// (one byte of the key): the response HMAC, keyed by the EK-salted session,
// no longer verifies, and no identity is reported.
func TestTPMIdentityForgedSRKResponse(t *testing.T) {
	var forge atomic.Bool
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		return rspMangler{next: next, on: &forge, cc: tpm2.TPMCCCreatePrimary, fn: flipPublicKey}
	}))
	a := testAgent(t, env, nil)
	forge.Store(true)
	_, err := a.TPMIdentity(context.Background(), api.IdentityRequest{EKCA: caBundle(t, env)})
	forge.Store(false)
	if !errors.Is(err, tpm.ErrResponseForged) || !errors.Is(err, api.ErrUntrustedTPM) {
		t.Fatalf("a forged SRK public: %v, want ErrResponseForged (untrusted TPM)", err)
	}
	// The TPM's response was genuine; the leak check at the end shows that
	// the objects and the session were flushed all the same.
}

// flipPublicKey flips a byte near the end (the key) of the outPublic of a
// response with one handle: header (10), object handle (4), parameterSize
// (4), the TPM2B_PUBLIC's size (2), then the public area.
func flipPublicKey(_, rsp []byte) []byte {
	pubSize := int(binary.BigEndian.Uint16(rsp[18:20]))
	rsp[20+pubSize-5] ^= 0x01
	return rsp
}

// An interposer answers ReadPublic of the SRK with a key of its own (here:
// another name). The state pins the SRK provision authenticated, so opening
// it on this bus fails with ErrIdentityMismatch before any session is salted
// to the interposer's key or any secret is sent.
func TestPinnedSRKRefusesAnInterposer(t *testing.T) {
	var lie atomic.Bool
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		return srkLiar{next: next, on: &lie}
	}))
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{7}, EKCA: caBundle(t, env)}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	lie.Store(true)
	defer lie.Store(false)
	_, err = New(Config{TPM: env.TPM, StateDir: dir})
	if !errors.Is(err, tpm.ErrIdentityMismatch) || api.ExitCode(err) != api.ExitIdentity {
		t.Fatalf("opening the state through a lying bus: %v (exit %d), want ErrIdentityMismatch (15)", err, api.ExitCode(err))
	}
}

// srkLiar changes the name in every TPM2_ReadPublic response for the SRK
// handle while on is set, as an interposer answering with its own key would.
type srkLiar struct {
	next transport.TPM
	on   *atomic.Bool
}

func (l srkLiar) Send(cmd []byte) ([]byte, error) {
	rsp, err := l.next.Send(cmd)
	if err != nil || !l.on.Load() || len(cmd) < 14 || len(rsp) < 16 ||
		tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != tpm2.TPMCCReadPublic ||
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != tpm.SRKHandle || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	forged := append([]byte(nil), rsp...)
	// outPublic (TPM2B), then name (TPM2B): flip the name's last byte.
	pubSize := int(binary.BigEndian.Uint16(forged[10:12]))
	nameAt := 12 + pubSize
	nameSize := int(binary.BigEndian.Uint16(forged[nameAt : nameAt+2]))
	forged[nameAt+2+nameSize-1] ^= 0x01
	return forged, nil
}

// An interposer changes the PCR values provision reads to seal the PK to
// (values it could reproduce on a bad boot): the read runs in an audit
// session salted to the pinned SRK, so the changed response fails its HMAC
// and nothing is provisioned.
func TestProvisionRefusesForgedPCRValues(t *testing.T) {
	var forge atomic.Bool
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		return rspMangler{next: next, on: &forge, cc: tpm2.TPMCCPCRRead, fn: flipLastParameter}
	}))
	a := testAgent(t, env, nil)
	forge.Store(true)
	_, err := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), PCRs: []int{0, 7}, EKCA: caBundle(t, env)})
	forge.Store(false)
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Fatalf("provision through a bus that changes PCR values: %v (exit %d), want ErrResponseForged (15)", err, api.ExitCode(err))
	}
	if st, err := a.Status(context.Background()); err != nil || st.Provisioned {
		t.Errorf("after the refusal: provisioned %v (%v)", st.Provisioned, err)
	}
}

// flipLastParameter flips the last byte of a response's parameters (of a
// PCR_Read: the last PCR value).
func flipLastParameter(_, rsp []byte) []byte {
	paramSize := int(binary.BigEndian.Uint32(rsp[10:14]))
	rsp[14+paramSize-1] ^= 0x01
	return rsp
}
