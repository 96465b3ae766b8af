package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review75OldKey makes on a an ECC P-256 signing key with the policy provd
// gave it before review 70 (its use branch bound to no command:
// ObjectPolicy(P), or PolicyOR of that and the duplication branch of
// dupBy, the officer's when empty, when extractable), recorded as kind
// (created, or imported: fixedParent clear whether extractable or not, as
// TPM2_Import requires) as provd recorded it then.
func review75OldKey(t *testing.T, a *Agent, name, kind string, extractable bool, dupBy string) {
	t.Helper()
	ctx := context.Background()
	ks, err := a.freshKeyState(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	kt, err := catalog.Lookup("ecc-p256", false)
	if err != nil {
		t.Fatal(err)
	}
	rec := keyRecord{Name: name, Kind: kind, Type: kt.Name, Usage: catalog.UsageSign, Extractable: extractable,
		PK: ks.pk.state.Name, DupBy: dupBy}
	rule, err := rec.rule()
	if err != nil {
		t.Fatal(err)
	}
	expr := officer.ObjectPolicy(ks.pk.expr)
	if extractable {
		dup, err := dupBranch(rule, ks.pk.officer, nil)
		if err != nil {
			t.Fatal(err)
		}
		expr = policy.Policy{policy.Or{Branches: []policy.Policy{expr, dup}}}
	}
	digest, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := kt.CreatedTemplate(catalog.UsageSign, digest, extractable || kind == api.KindImported)
	tmpl.ObjectAttributes.EncryptedDuplication = rule.set()
	tmpl = ks.pk.state.child(tmpl)
	rec.Template, rec.Policy, rec.CreatedAt = tpm2.Marshal(tmpl), hex.EncodeToString(digest), a.now().UTC()
	var auth []byte
	if extractable {
		if auth, err = tpm.RandomAuth(objectAuthSize); err != nil {
			t.Fatal(err)
		}
		rec.Auth = hex.EncodeToString(auth)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	var blob tpm.Blob
	if err := a.withLoadedPK(ks.pk, func(l *loadedPK) (err error) {
		blob, err = a.createUnderPKWith(l, tmpl, auth, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.commitBlobKey(ctx, rec, blob, map[string]string{}); err != nil {
		t.Fatal(err)
	}
}

// Held: keys made before review 70 (their use branch bound to no command)
// are not refused as tampered by keyState.usePolicy, in the daemon and
// one-shot, before and after a policy install (the kept key states
// dropped with the state's version): created extractable and
// --duplicable-by, imported without and with --extractable, and one
// transferred from a fleet device where it was made so (dup export through
// its older duplication branch; dup import takes its older policy,
// keyPolicyMatching); the extractable ones export under a KEK (their
// older duplication branch, branch 1). Nothing computes a key's policy
// on a warm sign: the same kept state serves it (the cached policy).
func TestReview75KeysMadeBeforeReview70StayUsable(t *testing.T) {
	t.Parallel()
	envA, envC := swtpmtest.Start(t), swtpmtest.Start(t)
	ctx := context.Background()
	signer := fleetSigner(t)
	a, va := review75Device(t, envA, signer, api.ProvisionRequest{}, true)
	installFleetPolicy(t, a, signer, va)
	authority, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(authority.Public())
	if err != nil {
		t.Fatal(err)
	}
	authPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	review75OldKey(t, a, "old-ext", api.KindCreated, true, "")
	review75OldKey(t, a, "old-by", api.KindCreated, true, authPEM)
	review75OldKey(t, a, "old-imp", api.KindImported, false, "")
	review75OldKey(t, a, "old-impx", api.KindImported, true, "")

	c := fleetDevice(t, envC, signer, api.ProvisionRequest{})
	review75OldKey(t, c, "old-c", api.KindCreated, true, "")
	peerA, err := a.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kdup, err := c.DupExport(ctx, api.DupExportRequest{Name: "old-c", Peer: peerA, Approval: approveDup(t, c, "old-c", peerA), EKCA: caBundle(t, envA)})
	if err != nil {
		t.Fatalf("dup export of an older key: %v", err)
	}
	if _, err := a.DupImport(ctx, api.DupImportRequest{Name: "old-tr", Dup: kdup}); err != nil {
		t.Fatalf("dup import of an older key: %v", err)
	}

	signAll := func(on *Agent) {
		t.Helper()
		for _, n := range []string{"old-ext", "old-by", "old-imp", "old-impx", "old-tr"} {
			from, fromName := a, n
			if n == "old-tr" {
				from, fromName = c, "old-c"
			}
			pub, _, err := from.KeyPublic(ctx, fromName)
			if err != nil {
				t.Fatal(err)
			}
			d := sha256.Sum256([]byte(n))
			for range 2 {
				sig, err := on.Sign(ctx, n, d[:], api.SignOptions{})
				if err != nil {
					t.Fatalf("sign with %s, made before review 70: %v", n, err)
				}
				if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
					t.Fatalf("%s: the signature does not verify", n)
				}
			}
		}
	}
	signAll(a)
	// Warm: the kept state serves the next sign, the policy not computed
	// again (its entry is the one kept).
	ks1, ok1 := a.states.keys["old-ext"]
	signVerifies(t, a, a, "old-ext")
	ks2, ok2 := a.states.keys["old-ext"]
	if !ok1 || !ok2 || len(ks1.use) == 0 || &ks1.use[0] != &ks2.use[0] {
		t.Errorf("a warm sign computed the key's policy again (kept %v %v)", ok1, ok2)
	}

	// The same state in a one-shot process (the daemon's resident keys
	// evicted: swtpm has three object slots).
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	one, err := New(Config{TPM: envA.TPM, StateDir: a.dir})
	if err != nil {
		t.Fatal(err)
	}
	signAll(one)
	one.Close()

	// A policy install: a new state version, the kept states read again.
	installFleetPolicy(t, a, signer, va+1)
	signAll(a)

	// The extractable ones back up under a KEK, through their older
	// duplication branch.
	comps := [][]byte{bytes.Repeat([]byte{0x5a}, 32), bytes.Repeat([]byte{0x3c}, 32)}
	kek := api.KEKImportRequest{Name: "kek", Components: comps}
	for _, cp := range comps {
		k, _ := keywrap.KCV(cp)
		kek.KCVs = append(kek.KCVs, hex.EncodeToString(k[:]))
	}
	combined, _ := keywrap.Combine(comps)
	kcv, _ := keywrap.KCV(combined)
	kek.KCV = hex.EncodeToString(kcv[:])
	kinfo, err := a.ImportKEK(ctx, kek)
	if err != nil {
		t.Fatal(err)
	}
	kekName, _ := hex.DecodeString(kinfo.ObjectName)
	for _, n := range []string{"old-ext", "old-impx"} {
		ks, err := a.readKeyState(ctx, n, true)
		if err != nil {
			t.Fatal(err)
		}
		obj, _ := hex.DecodeString(ks.rec.Object)
		dupAp, kekAp, err := officer.ApproveExport(officertest.Key(), ks.pk.state.Policy.digest(), obj, kekName)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: n, KEK: "kek", Approval: &api.ExportApproval{Duplication: dupAp, KEK: kekAp}}); err != nil {
			t.Errorf("key export of %s, made before review 70: %v", n, err)
		}
	}
}
