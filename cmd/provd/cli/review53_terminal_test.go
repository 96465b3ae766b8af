package cli_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/server"
	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review53Raw lists what a terminal acts on: none of it may reach one raw.
var review53Raw = []string{"\x1b", "\r", "\x07", "\x9b", "\u202e"}

// review53NoRaw fails t when out holds a terminal control character raw.
func review53NoRaw(t *testing.T, what, out string) {
	t.Helper()
	var raw []string
	for _, c := range review53Raw {
		if strings.Contains(out, c) {
			raw = append(raw, c)
		}
	}
	if len(raw) == 0 {
		return
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.ContainsAny(l, strings.Join(review53Raw, "")) {
			lines = append(lines, fmt.Sprintf("%q", l))
		}
	}
	t.Errorf("%s printed %q raw, in:\n%s", what, raw, strings.Join(lines, "\n"))
}

// review53Daemon serves the daemon's API in this process on env's TPM
// (reopened: close it again before a one-shot command), roles as given,
// logging as text into log (the daemon's stderr when not on the journal).
// stop shuts it down.
func review53Daemon(t *testing.T, env *swtpmtest.Env, state string, roles *server.Roles, log io.Writer) (hc *http.Client, stop func()) {
	t.Helper()
	if env.TPM == nil {
		env.Reopen()
	}
	lg := slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: state, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Agent: ag, TPM: env.TPM, Roles: roles, ExitCode: cli.ExitCode, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "provd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	return hc, func() {
		hc.CloseIdleConnections()
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		if err := ag.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func review53Post(t *testing.T, hc *http.Client, r api.Route, body any) (int, string) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(r.Method, "http://provd"+r.Path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	rsp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	got, _ := io.ReadAll(rsp.Body)
	return rsp.StatusCode, string(got)
}

// FLAW (failed before the mend): `provd status` prints the recorded fleet verdict raw. An
// officer-role caller of the daemon (A3 with the officer role: POST
// /v1/attest/record takes any verdict, bounded only in size) records a
// verdict whose endpoint, device ID and reasons hold terminal control
// characters; status is open to every caller (RoleAny), and whoever runs
// it (an auditor, root, a monitoring script's human) gets their line
// erased and lines of the caller's making drawn in place: here a forged
// "attestation: pass" in place of the recorded "fail". The same text from
// a compromised or confused fleet endpoint reaches it through `attest
// now`, which records the endpoint's reasons as sent. audit show and fw log
// quote such text (printable); status does not.
// Mend: print v.Endpoint, v.DeviceID and each r.String() through
// printable (and the same in `attest now`'s verdict lines, fleet.go:434,
// and `fleet device show`, fleet.go:723-727); or refuse control
// characters in AttestRecord.
func TestReview53StatusPrintsARecordedVerdictRaw(t *testing.T) {
	t.Parallel()
	out := statusAfterVerdict(t, "https://fleet.example\x1b[2K\r", "\x1b[1A\x1b[2K\r", []map[string]any{
		{"code": "\x1b[1A\x1b[2K\rattestation: pass at 2026-12-07T00:00:00Z (https://fleet.example, device 5f2a0c…)\x1b]0;owned\x07"},
		{"code": "quote_signature", "detail": "k\u202egnp.exe"},
	})
	review53NoRaw(t, "status", out)
}

// FLAW (failed before the mend): `provd key list` prints a key record's fields raw. The daemon checks a name, label and context when it makes a key,
// but the records are read back as the state holds them: root on the
// device (A4), or whoever edits a copy of the state (A6) that an operator
// later inspects, writes a record whose name (or type, usage, label,
// context) holds control characters, and the user-role caller or officer
// running key list (RoleUser) sees a line erased and another drawn: here
// the key "tls" listed where the record names something else. audit show
// and fw log quote such text; key list does not.
// Mend: print each field through printable in key list's rows (and in
// printKey, which prints what the daemon answers) (or refuse, at read, a record whose name is not its record
// name: the record name is checked, the "name" inside it is not).
func TestReview53KeyListPrintsAPlantedRecordRaw(t *testing.T) {
	t.Parallel()
	_, state, d := provisionedDevice(t)
	d(0, "key", "create", "k1", "--type", "ecc-p256")

	review53EditKeyRecord(t, state, "k1", map[string]any{"name": "k1\x1b[2K\rtls", "usage": "sign\x1b]0;owned\x07"})
	review53NoRaw(t, "key list", d(0, "key", "list"))
}

// review53EditKeyRecord sets fields of the key record key.NAME in the
// state's manifest, as root on the device (A4) or an editor of a copy of
// the state (A6) can: nothing authenticates the manifest's records.
func review53EditKeyRecord(t *testing.T, state, name string, set map[string]any) {
	t.Helper()
	m, objects, rec := readKeyRecord(t, state, name)
	for k, v := range set {
		rec[k] = v
	}
	objects["key."+name], _ = json.Marshal(rec)
	m["objects"], _ = json.Marshal(objects)
	raw, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(state, store.ManifestFile), append(raw, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

// readKeyRecord reads the state's manifest in state, its objects, and key
// name's record among them, as JSON to edit.
func readKeyRecord(t *testing.T, state, name string) (manifest, objects map[string]json.RawMessage, rec map[string]any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(state, store.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(manifest["objects"], &objects); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(objects["key."+name], &rec); err != nil {
		t.Fatal(err)
	}
	return manifest, objects, rec
}

// FLAW (failed before the mend: the receiver showed it quoted, then
// checkCarried refuses the state): a PK moved from another device brings its key records unchecked
// but for their names, and `provd key list` prints them raw on the
// receiver. Root on the origin (A4 there), or whoever crafts the moved
// state there, gives a key record a context (label, type, usage, KCV: none
// is checked at adoption, adoptedState) of terminal control characters
// before dup export --pk; the receiver's officer approves the PK (its TPM
// name: the approval covers nothing of the records' text) and adopts it
// with provision --from; from then on every key list on the receiver, a
// user-role caller's or the officer's, draws lines of the origin's making.
// Mend: print through printable in key list (and printKey); and check
// adopted records as new ones are checked (officer.Recipe.Check for a
// derived key's recipe, catalog for type and usage, hex KCV).
func TestReview53MovedPKBringsARecordThatKeyListPrintsRaw(t *testing.T) {
	t.Parallel()
	f := newPKFleet(t)
	a, b, p, dir := f.a, f.b, f.p, f.dir
	officerKey, caB, caAB, stB, proven := f.officerKey, f.caB, f.caAB, f.stB, f.proven
	fleet := func(dev device, name string, args ...string) pkStatus { return f.provision(t, dev, name, args...) }
	stA := fleet(a, "a", append([]string{"--ek-ca", caAB, "--duplicable-to", p("b.peer.json"), "--peer-pk", stB.PKName}, proven...)...)
	a(0, "key", "approve", "--officer", officerKey, "--pk-policy", stA.PolicyDigest, "--movable", "--type", "ecc-p256", "--label", "telemetry", "--out", p("dk.approval.json"))
	a(0, "key", "derive", "dk", "--type", "ecc-p256", "--label", "telemetry", "--approval", p("dk.approval.json"))

	a(0, append([]string{"key", "approve", "--officer", officerKey, "--pk-policy", stA.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stB.PKName,
		"--object-name", stA.PKName, "--out", p("pk.take.json")}, proven...)...)
	// Root on A edits the record, then sends the PK: mended, B refuses the
	// state (tampered, exit 14: checkCarried), keeps its own, and shows
	// nothing raw. Each edit is a record provd would not have written.
	original := map[string]any{"context": "", "kind": "derived", "usage": "sign", "type": "ecc-p256", "kcv": ""}
	for _, edit := range []map[string]any{
		{"context": "\x1b[1A\x1b[2K\rtls  derived  ecc-p256  sign  false  tls/"},
		{"kind": "kek"},
		{"usage": "decrypt"},
		{"type": "rsa-2048"},
		{"kcv": "abcdef"},
	} {
		review53EditKeyRecord(t, filepath.Join(dir, "a"), "dk", original)
		review53EditKeyRecord(t, filepath.Join(dir, "a"), "dk", edit)
		a(0, "dup", "export", "--pk", "--to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caB, "--out", p("pk.dup"))
		b(api.ExitTampered, "provision", "--from", p("pk.dup"), "--approval", p("pk.take.json"), "--force")
		review53NoRaw(t, "key list on the receiver", b(0, "key", "list"))
		if st := b(0, "status", "-o", "json"); !strings.Contains(st, stB.PKName) {
			t.Fatalf("B after refusing the state edited with %v is not as it was:\n%s", edit, st)
		}
	}
	// The record as A wrote it: adopted.
	review53EditKeyRecord(t, filepath.Join(dir, "a"), "dk", original)
	a(0, "dup", "export", "--pk", "--to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caB, "--out", p("pk.dup"))
	b(0, "provision", "--from", p("pk.dup"), "--approval", p("pk.take.json"), "--force")
	if list := b(0, "key", "list"); !strings.Contains(list, "dk") {
		t.Fatalf("B's keys after the adoption:\n%s", list)
	}
}

// FLAW (failed before the mend): `provd tpm identity` prints the EK certificate's subject and
// issuer raw (pkix.Name.String escapes RFC 4514's specials, not control
// characters, and a UTF8String may hold any). On trust on first use the
// certificate vouches for nothing but its key: whoever hands the operator
// the --ek-cert file, or an interposer (A1) answering the NV read of the
// certificate with one of its making around the TPM's genuine EK key,
// controls every name in it; the key matches, so the command succeeds and
// prints them. Here the subject erases the "TRUST ON FIRST USE" line above
// it and draws "verified: the EK certificate chains to a trusted
// manufacturer" in its place; the issuer retitles the terminal. The TCG
// SAN's manufacturer, model and version strings print the same way.
// Mend: print Subject, Issuer, Chain, Manufacturer, Model and Version
// through printable in printIdentity.
func TestReview53TPMIdentityPrintsTheCertificatesNamesRaw(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	der, err := env.TPM.ReadNV(tpm2.TPMHandle(0x01c00002))
	if err != nil {
		t.Fatal(err)
	}
	env.CloseTPM()
	genuine, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "TPM CA\x1b]0;owned\x07"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	var ext []pkix.Extension
	for _, e := range genuine.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 35}) || e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 14}) {
			continue // the authority and subject key IDs: made afresh
		}
		ext = append(ext, e)
	}
	tmpl := &x509.Certificate{
		SerialNumber:    big.NewInt(2),
		Subject:         pkix.Name{CommonName: "\x1b[1A\x1b[2K\rTrust  verified: the EK certificate chains to a trusted manufacturer"},
		NotBefore:       time.Now().Add(-time.Hour),
		NotAfter:        time.Now().Add(24 * time.Hour),
		KeyUsage:        genuine.KeyUsage,
		ExtraExtensions: ext,
	}
	forged, err := x509.CreateCertificate(rand.Reader, tmpl, ca, genuine.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ek.der")
	if err := os.WriteFile(f, forged, 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := run(t, nil, "--tpm", env.Spec, "--state-dir", filepath.Join(t.TempDir(), "state"),
		"tpm", "identity", "--ek-cert", f, "--trust-on-first-use")
	if code != 0 {
		t.Fatalf("tpm identity: exit %d\n%s%s", code, out, stderr)
	}
	review53NoRaw(t, "tpm identity", out)
}

// FLAW (failed before the mend): the CLI's error handler (Main: "provd: %v") prints whatever error
// text it is given raw, and a daemon's error message is text from the
// socket. The threat model already treats what answers on the socket as
// untrusted for the exit code ("a hostile or broken daemon (or something
// on its socket)"); its message reaches the terminal unquoted. Here a
// socket answering every request with an error whose message erases the
// line and draws "provisioned: yes" makes `provd status` look like a
// success on the operator's terminal (the exit code stays 1). Messages
// that embed state text with %s (KCVs, delivered PCR maps, the endpoint's
// reason details in `attest now`/`attest peer`) take the same road.
// Mend: in Main, print printable(err.Error()) (or quote only the runes
// that do not print, keeping newlines out too).
func TestReview53ErrorHandlerPrintsADaemonsMessageRaw(t *testing.T) {
	sock := failingDaemon(t, "\x1b[2K\rprovisioned: yes\x1b]0;owned\x07")
	out, stderr, code := run(t, map[string]string{"PROVD_SOCKET": sock, "PROVD_STATE_DIR": "/nonexistent"}, "status")
	if code == 0 {
		t.Fatalf("status: exit 0\n%s%s", out, stderr)
	}
	review53NoRaw(t, "the error handler", stderr)
}

// Held: the daemon's log keeps one line per request whatever a caller
// sends. A caller (here the officer; a user-role caller's key names are
// logged the same way, key_name, and a refused caller's request logs
// only the operation and its uid) sends a key name holding a newline and
// a forged log line; the text handler (the daemon's stderr off the
// journal) quotes the attribute, and the error names the key with %q. The
// journal handler (systemd.NewLogHandler) sends the value as one field of
// the native protocol, MESSAGE being the constant message.
func TestReview53DaemonLogKeepsOneLinePerRequest(t *testing.T) {
	t.Parallel()
	env, state, _ := provisionedDevice(t)

	root := server.RoleMembers{UIDs: []int{0}}
	var log bytes.Buffer
	hc, stop := review53Daemon(t, env, state, &server.Roles{Officer: root, User: root}, &log)
	forged := "k\ntime=2026-12-07T00:00:00Z level=INFO msg=request operation=zeroize caller_uid=0\x1b[2K\r"
	code, body := review53Post(t, hc, api.RouteKeyDelete, api.KeyName{Name: forged})
	code2, body2 := review53Post(t, hc, api.RouteKeySign, map[string]any{"name": forged, "digest": make([]byte, 32)})
	stop()
	env.CloseTPM()
	if code != http.StatusBadRequest || code2 == http.StatusOK {
		t.Fatalf("key delete: %d %s; key sign: %d %s", code, body, code2, body2)
	}
	for _, line := range strings.Split(strings.TrimSuffix(log.String(), "\n"), "\n") {
		if !strings.HasPrefix(line, "time=") {
			t.Errorf("a log line the daemon did not begin: %q\nlog:\n%s", line, log.String())
		}
	}
	if strings.Contains(log.String(), "\nlevel=") || strings.Contains(log.String(), "\ntime=2026-12-07T00:00:00Z") {
		t.Errorf("the caller forged a log line:\n%s", log.String())
	}
	if !strings.Contains(log.String(), `key_name="k\ntime=`) {
		t.Errorf("the log does not show the key name quoted:\n%s", log.String())
	}
	review53NoRaw(t, "the daemon's log", log.String())
}

// FLAW (failed before the mend: printed quoted, then refused where the file is read): refusals name what a file says, raw: a transfer file's fields are
// printed with %.16s before anything in the file is checked or
// authenticated, and the CLI's error handler prints the refusal as it is.
//   - provision --from: "the PK was sent to another transfer key
//     (%.16s…)", the dup file's parent_name (and its pk_policy and officer
//     in the refusal after it);
//   - dup import: "the duplicate was made for another transfer key
//     (%.16s…)", the dup file's parent_name;
//   - peer prove: "the challenge is for another transfer key (%.16s…)", the
//     challenge file's parent_name;
//   - unseal: "sealed under another provisioning key (%.16s…)", the sealed
//     file's pk;
//   - dup export (and dup export --pk): "the key would not work on the
//     peer: ... the peer's are %.16s… and %.16s…", the peer identity
//     file's pk_policy and officer (TransferKey checks its parent and PK
//     name, not these).
//
// Each file comes from elsewhere by design: a sender's .dup, a
// challenger's challenge, a peer's identity, a sealed file kept beside an
// application. Whoever
// writes one (or changes it on the way) puts 16 bytes of terminal control
// into the officer's (or operator's) terminal, enough to move up, erase the
// "provd: ..." line and write another: here "adopted" where the refusal
// was.
// Mend: %.16q, or printable(), for a file's fields in these errors; better,
// refuse at parse (ParseDupFile, ParsePeerChallenge, the sealed blob's
// reader) a parent_name, pk_policy, officer or pk that is not lower-case
// hex, before naming it.
func TestReview53RefusalsNameAFilesFieldsRaw(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	env.CloseTPM()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := deviceOn(t, env, state)
	_, officerPub := officertest.Files(t, dir)
	d(0, "provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, env), "--officer-key", officerPub)
	d(0, "peer", "identity", "--out", filepath.Join(dir, "peer.json"))
	const evil = "\x1b[1A\x1b[2K\radopted"
	file := func(name string, v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	pkDup := file("pk.dup", api.DupFile{Format: api.DupFormat, Type: api.DupTypePK, ParentName: evil})
	keyDup := file("key.dup", api.DupFile{Format: api.DupFormat, Type: "ecc-p256", ParentName: evil})
	challenge := file("challenge.json", api.PeerChallenge{Format: api.ChallengeFormat, ParentName: evil})
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	d(0, "seal", "--in", filepath.Join(dir, "secret"), "--out", filepath.Join(dir, "sealed.json"))
	var sealed map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "sealed.json"))
	if err := json.Unmarshal(b, &sealed); err != nil {
		t.Fatal(err)
	}
	sealed["pk"] = evil
	sealedFile := file("sealed.json", sealed)
	d(0, "key", "create", "x", "--type", "ecc-p256", "--extractable")
	var peer map[string]any
	b, _ = os.ReadFile(filepath.Join(dir, "peer.json"))
	if err := json.Unmarshal(b, &peer); err != nil {
		t.Fatal(err)
	}
	peer["pk_policy"] = evil
	peerFile := file("evil.peer.json", peer)

	for _, c := range []struct {
		what string
		args []string
	}{
		{"provision --from", []string{"provision", "--from", pkDup, "--force"}},
		{"dup import", []string{"dup", "import", "k", "--in", keyDup}},
		{"peer prove", []string{"peer", "prove", "--challenge", challenge, "--out", filepath.Join(dir, "proof.json")}},
		{"unseal", []string{"unseal", "--in", sealedFile, "--out", filepath.Join(dir, "out")}},
		{"dup export", []string{"dup", "export", "x", "--to", peerFile, "--ek-ca", ekCAFile(t, env), "--out", filepath.Join(dir, "x.dup")}},
	} {
		out, stderr, code := run(t, nil, append([]string{"--tpm", env.Spec, "--state-dir", state}, c.args...)...)
		review53NoRaw(t, c.what+"'s refusal", stderr)
		// Mended further: the field is refused where the file is read
		// (api.CheckHexFields: bad input, naming the field, not its text).
		if code != api.ExitUsage || !strings.Contains(stderr, "is not hex") || strings.Contains(stderr, "adopted") {
			t.Errorf("%s: exit %d, want the file refused as not hex, naming the field only\n%s%s", c.what, code, out, stderr)
		}
	}
}

// failingDaemon is a socket whose daemon answers every request with HTTP
// 500 and an error of message, in the daemon's error form: what answers on
// provd's socket is not trusted for its text.
func failingDaemon(t *testing.T, message string) (sock string) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "provd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": message, "kinds": []string{}, "exit_code": 1}})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// statusAfterVerdict is provd status on a provisioned device after its
// daemon's officer recorded a failed verdict of endpoint, deviceID and
// reasons (POST attest/record, whose texts it takes as sent).
func statusAfterVerdict(t *testing.T, endpoint, deviceID string, reasons []map[string]any) string {
	t.Helper()
	env, state, d := provisionedDevice(t)
	root := server.RoleMembers{UIDs: []int{0}}
	var log bytes.Buffer
	hc, stop := review53Daemon(t, env, state, &server.Roles{Officer: root, User: root}, &log)
	code, body := review53Post(t, hc, api.RouteAttestRecord, map[string]any{
		"endpoint": endpoint, "device_id": deviceID, "pass": false, "reasons": reasons, "at": time.Now().UTC(),
	})
	stop()
	if code != http.StatusOK {
		t.Fatalf("attest record: %d %s", code, body)
	}
	env.CloseTPM()
	return d(0, "status")
}
