package cli_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/server"
	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/cmd/provd/cli/fleetserver"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/pgtest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// endpoint is a fleet endpoint in this process over TLS 1.3, its
// certificate in a PEM file for --ca-cert.
type endpoint struct {
	srv   *httptest.Server
	ca    string
	token string
	store fleet.Store
}

func startEndpoint(t *testing.T, dbURL string, roots ...*swtpmtest.Env) *endpoint {
	t.Helper()
	return startEndpointWith(t, dbURL, nil, roots...)
}

// startEndpointWith starts an endpoint whose configuration cfg adjusts.
func startEndpointWith(t *testing.T, dbURL string, cfg func(*fleet.Config), roots ...*swtpmtest.Env) *endpoint {
	t.Helper()
	var bundle []byte
	for _, env := range roots {
		bundle = append(bundle, env.CAPEM()...)
	}
	pool, err := attest.CertPoolFromPEM(bundle)
	if err != nil {
		t.Fatal(err)
	}
	st, err := fleet.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &endpoint{token: "operator-secret-token", store: st}
	c := fleet.Config{Store: st, Roots: pool}
	if cfg != nil {
		cfg(&c)
	}
	h := (&fleet.Server{E: fleet.New(c), Operators: [][32]byte{fleet.TokenHash(e.token)}}).Handler()
	e.srv = httptest.NewUnstartedServer(h)
	e.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	e.ca = filepath.Join(t.TempDir(), "fleet-ca.pem")
	if err := os.WriteFile(e.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *endpoint) client(t *testing.T, token string) *fleetapi.Client {
	t.Helper()
	ca, err := os.ReadFile(e.ca)
	if err != nil {
		t.Fatal(err)
	}
	c, err := fleetapi.NewClient(e.srv.URL, ca, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fleetDevice is a provisioned device.
func fleetDevice(t *testing.T) *cliEnv {
	t.Helper()
	c := newCLIEnv(t)
	if _, stderr, code := c.run("provision", "--ek-ca", ekCAFile(t, c.swtpm)); code != 0 {
		t.Fatalf("provision: %s", stderr)
	}
	return c
}

func (c *cliEnv) expect(t *testing.T, want int, args ...string) string {
	t.Helper()
	out, stderr, got := c.run(args...)
	if got != want {
		t.Fatalf("provd %s: exit %d, want %d\n%s%s", strings.Join(args, " "), got, want, out, stderr)
	}
	return out
}

// evidence makes an attestation request for device c as attest now does,
// against nonce.
func evidence(t *testing.T, c *cliEnv, deviceID string, ch fleetapi.Challenge) fleetapi.AttestRequest {
	t.Helper()
	c.swtpm.Reopen()
	defer c.swtpm.CloseTPM()
	ag, err := agent.New(agent.Config{TPM: c.swtpm.TPM, StateDir: c.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	req := fleetapi.AttestRequest{DeviceID: deviceID, Nonce: ch.Nonce}
	q, err := ag.AttestQuote(context.Background(), api.AttestQuoteRequest{Nonce: ch.Nonce, PCRs: ch.PCRs})
	if err != nil {
		t.Fatal(err)
	}
	req.Quote, req.Signature, req.PCRs = q.Quote, q.Signature, q.PCRs
	return req
}

func deviceID(t *testing.T, c *cliEnv) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, "attest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		DeviceID string `json:"device_id"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.DeviceID
}

func hasReason(v fleetapi.Verdict, code string) bool {
	for _, r := range v.Reasons {
		if r.Code == code {
			return true
		}
	}
	return false
}

// TestFleetEndToEnd: two swtpm devices enroll (EK certificate, AK
// activated); the first attests and passes (its quote the class's baseline,
// trust on first use); the second passes, then after a PCR extend fails
// with a reason naming the PCR (exit 23). A replayed nonce, a quote signed by
// another AK, a tampered measurement log, an EK certificate from an
// untrusted CA and an operator request without credentials are each
// rejected with their reason.
func TestFleetEndToEnd(t *testing.T) {
	a, b := fleetDevice(t), fleetDevice(t)
	e := startEndpoint(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"), a.swtpm, b.swtpm)
	for _, d := range []*cliEnv{a, b} {
		var dev fleetapi.Device
		out := d.expect(t, 0, "attest", "enroll", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--class", "gateway", "-o", "json")
		checkJSON(t, "attest enroll", out)
		if err := json.Unmarshal([]byte(out), &dev); err != nil || dev.State != fleet.StateEnrolled {
			t.Fatalf("enroll: %+v %v", dev, err)
		}
	}
	idA, idB := deviceID(t, a), deviceID(t, b)
	if idA == idB {
		t.Fatal("two TPMs, one ID")
	}
	var v fleetapi.Verdict
	out := a.expect(t, 0, "attest", "now", "--ca-cert", e.ca, "-o", "json")
	checkJSON(t, "attest now", out)
	if err := json.Unmarshal([]byte(out), &v); err != nil || !v.Pass || !hasReason(v, fleet.CodeBaseline) {
		t.Fatalf("A's first attestation: %+v %v", v, err)
	}
	// One open of the TPM for the quote, the appraisal and its record
	// (issue 14: there were two; -v prints one line at each close).
	if _, stderr, code := b.run("-v", "attest", "now", "--ca-cert", e.ca); code != 0 || strings.Count(stderr, "provd: TPM ") != 1 {
		t.Fatalf("attest now -v: exit %d, %d opens of the TPM:\n%s", code, strings.Count(stderr, "provd: TPM "), stderr)
	}
	b.expect(t, 0, "tpm", "pcr", "extend", "7", "--data", "a changed boot")
	out = b.expect(t, api.ExitAttestFailed, "attest", "now", "--ca-cert", e.ca)
	if !strings.Contains(out, "pcr_policy sha256 PCR 7") {
		t.Fatalf("B after the extend:\n%s", out)
	}

	ctx := context.Background()
	dev := e.client(t, "")
	// A replayed nonce.
	ch, err := dev.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: idA})
	if err != nil {
		t.Fatal(err)
	}
	req := evidence(t, a, idA, ch)
	if v, err := dev.Attest(ctx, req); err != nil || !v.Pass {
		t.Fatalf("fresh evidence: %+v %v", v, err)
	}
	if v, err := dev.Attest(ctx, req); err != nil || v.Pass || !hasReason(v, fleet.CodeNonceUnknown) {
		t.Fatalf("replayed: %+v %v", v, err)
	}
	// A quote signed by another AK (B's TPM, over A's nonce).
	ch, _ = dev.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: idA})
	other := evidence(t, b, idA, ch)
	if v, err := dev.Attest(ctx, other); err != nil || v.Pass || !hasReason(v, fleet.CodeQuoteSignature) {
		t.Fatalf("another AK's quote: %+v %v", v, err)
	}
	// A tampered measurement log: one that claims PCR 12 was extended.
	ch, _ = dev.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: idA})
	req = evidence(t, a, idA, ch)
	l, _ := attest.NewEventLog(0x000b)
	if _, err := l.Append(12, attest.EVEventTag, []byte("not what happened")); err != nil {
		t.Fatal(err)
	}
	req.MeasurementLog, _ = l.MarshalBinary()
	if v, err := dev.Attest(ctx, req); err != nil || v.Pass || !hasReason(v, fleet.CodeLogReplay) {
		t.Fatalf("tampered log: %+v %v", v, err)
	}
	// An EK certificate from a CA the endpoint does not trust.
	other2 := startEndpoint(t, "sqlite://"+filepath.Join(t.TempDir(), "other.db"), b.swtpm)
	_, stderr, code := a.run("attest", "enroll", "--endpoint", other2.srv.URL, "--ca-cert", other2.ca, "--class", "gateway")
	if code == 0 || !strings.Contains(stderr, "rejected") || !strings.Contains(stderr, "EK certificate") {
		t.Fatalf("enroll with an untrusted EK CA: exit %d: %s", code, stderr)
	}
	// Operators: nothing without a valid token.
	for _, token := range []string{"", "wrong"} {
		_, err := e.client(t, token).Devices(ctx)
		var ae *fleetapi.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Fatalf("devices with token %q: %v", token, err)
		}
		if _, err := e.client(t, token).SetPolicy(ctx, fleetapi.Policy{Class: "gateway"}); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Fatalf("policy set with token %q: %v", token, err)
		}
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	op := []string{"--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile}
	var list []fleetapi.Device
	out = a.expect(t, 0, append([]string{"fleet", "devices", "-o", "json"}, op...)...)
	checkJSON(t, "fleet devices", out)
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 {
		t.Fatalf("devices: %+v %v", list, err)
	}
	for _, args := range [][]string{
		{"fleet", "device", "show", idB},
		{"fleet", "policy", "show", "--class", "gateway"},
		{"fleet", "policy", "set", "--class", "camera", "--manifest", strings.Repeat("ab", 32)},
	} {
		checkJSON(t, strings.Join(args[:3], " "), a.expect(t, 0, append(append(args, "-o", "json"), op...)...))
	}
	if out := a.expect(t, 0, append([]string{"fleet", "device", "show", idB}, op...)...); !strings.Contains(out, "pcr_policy sha256 PCR 7") {
		t.Fatalf("device show:\n%s", out)
	}
	a.expect(t, 0, append([]string{"fleet", "policy", "show", "--class", "gateway"}, op...)...)
	checkJSON(t, "fleet device revoke", a.expect(t, 0, append([]string{"fleet", "device", "revoke", idA, "-o", "json"}, op...)...))
	if _, stderr, code := a.run("attest", "now", "--ca-cert", e.ca); code != api.ExitAttestFailed || !strings.Contains(stderr, "revoked") {
		t.Fatalf("revoked: exit %d: %s", code, stderr)
	}
	// Evidence for a nonce issued before the revocation fails too.
	if v, err := dev.Attest(ctx, req); err != nil || v.Pass || !hasReason(v, fleet.CodeRevoked) {
		t.Fatalf("revoked device's evidence: %+v %v", v, err)
	}
}

// TestFleetReplicasPostgres: two endpoint replicas on one PostgreSQL (a
// real server the test starts) serve one fleet: a device enrolled through
// one attests through the other, and a nonce issued by one is accepted
// once by the other, never again by either.
func TestFleetReplicasPostgres(t *testing.T) {
	pg := pgtest.Start(t)
	d := fleetDevice(t)
	r1 := startEndpoint(t, pg.URL, d.swtpm)
	r2 := startEndpoint(t, pg.URL, d.swtpm)
	d.expect(t, 0, "attest", "enroll", "--endpoint", r1.srv.URL, "--ca-cert", r1.ca, "--class", "gateway")
	id := deviceID(t, d)
	ctx := context.Background()
	c1, c2 := r1.client(t, ""), r2.client(t, "")
	ch, err := c1.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	req := evidence(t, d, id, ch)
	if v, err := c2.Attest(ctx, req); err != nil || !v.Pass {
		t.Fatalf("a nonce of replica 1 at replica 2: %+v %v", v, err)
	}
	for _, c := range []*fleetapi.Client{c1, c2} {
		if v, err := c.Attest(ctx, req); err != nil || v.Pass || !hasReason(v, fleet.CodeNonceUnknown) {
			t.Fatalf("the same nonce again: %+v %v", v, err)
		}
	}
	// The CLI against the other replica: the device's history is one (the
	// replays were refused before anything was recorded).
	d.expect(t, 0, "attest", "now", "--endpoint", r2.srv.URL, "--ca-cert", r2.ca)
	h, err := r1.client(t, r1.token).Appraisals(ctx, id)
	if err != nil || len(h) != 2 {
		t.Fatalf("history seen from replica 1: %d appraisals, %v", len(h), err)
	}
}

// TestFleetServeCLI: provd fleet serve as an operator runs it: a
// self-signed TLS 1.3 certificate and an operator token made on first
// start under the state directory, SQLite by default; a device enrolls and
// attests against it pinning that certificate; the operator lists devices
// with the token; SIGTERM (the context) shuts it down cleanly.
func TestFleetServeCLI(t *testing.T) {
	d := fleetDevice(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	url, stop, stderr := serveFleetCLI(t, "--state-dir", dir, "fleet", "serve", "--listen", "127.0.0.1:0", "--ek-ca", ekCAFile(t, d.swtpm))
	ca := filepath.Join(dir, "fleet", "tls.crt")
	d.expect(t, 0, "attest", "enroll", "--endpoint", url, "--ca-cert", ca, "--class", "gateway")
	d.expect(t, 0, "attest", "now", "--ca-cert", ca)
	op := []string{"--endpoint", url, "--ca-cert", ca, "--token-file", filepath.Join(dir, "fleet", "operator.token")}
	if out := d.expect(t, 0, append([]string{"fleet", "devices"}, op...)...); !strings.Contains(out, deviceID(t, d)) {
		t.Fatalf("devices:\n%s", out)
	}
	// Without the pinned certificate the device does not talk to it.
	if _, _, code := d.run("attest", "now"); code == 0 {
		t.Fatal("attest now without --ca-cert trusted a self-signed endpoint")
	}
	if code := stop(); code != 0 {
		t.Fatalf("fleet serve exited %d: %s", code, stderr.String())
	}
	// One structured line per request, by route: never a device ID.
	if log := stderr.String(); !strings.Contains(log, `"route":"POST /v1/attest"`) || strings.Contains(log, deviceID(t, d)) {
		t.Fatalf("request log:\n%s", log)
	}
	if fi, err := os.Stat(filepath.Join(dir, "fleet", "tls.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("tls.key: %v %v", fi, err)
	}
}

// serveFleetCLI runs provd with args (fleet serve) in this process until
// stop, which returns its exit code; url is where it serves.
func serveFleetCLI(t *testing.T, args ...string) (url string, stop func() int, stderr *lockedBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr = new(lockedBuffer)
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, args, cli.Deps{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: stderr, Getenv: func(string) string { return "" }, Server: fleetserver.Server{}})
	}()
	stop = func() int {
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(30 * time.Second):
			t.Fatal("fleet serve did not stop")
			return -1
		}
	}
	for i := 0; ; i++ {
		select {
		case code := <-done:
			t.Fatalf("fleet serve exited %d: %s", code, stderr.String())
		default:
		}
		if i > 400 {
			t.Fatalf("fleet serve did not come up: %s", stderr.String())
		}
		if _, after, ok := strings.Cut(stderr.String(), "serving "); ok {
			url, _, _ = strings.Cut(after, " ")
			return url, stop, stderr
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestFleetServeAuthorityKey: fleet serve --authority-key signs with a
// key of the host's provd, in its TPM; fleet authority serves that key's
// public part; an extractable key, or none, is refused before serving.
func TestFleetServeAuthorityKey(t *testing.T) {
	h := newCLIEnv(t)
	_, officerPub := officertest.Files(t, t.TempDir())
	h.must("provision", "--ek-ca", ekCAFile(t, h.swtpm), "--officer-key", officerPub)
	h.must("key", "create", "fleet-authority", "--type", "ecc-p256")
	h.must("key", "create", "movable", "--type", "ecc-p256", "--extractable")
	ca := ekCAFile(t, h.swtpm)
	serve := []string{"--tpm", h.swtpm.Spec, "--state-dir", h.dir, "fleet", "serve", "--listen", "127.0.0.1:0", "--ek-ca", ca, "--authority-key"}
	for key, want := range map[string]int{"movable": api.ExitNotPermitted, "nosuch": api.ExitNotFound} {
		if _, stderr, code := run(t, nil, append(serve, key)...); code != want {
			t.Fatalf("--authority-key %s: exit %d, want %d\n%s", key, code, want, stderr)
		}
	}
	// A daemon answering on the socket: refused, with --tpm too (found by
	// review: the check was skipped when --tpm was given).
	sock := filepath.Join(t.TempDir(), "provd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, stderr, code := run(t, nil, append([]string{"--socket", sock}, append(serve, "fleet-authority")...)...); code != api.ExitNotPermitted || !strings.Contains(stderr, "daemon answers") {
		t.Fatalf("--authority-key beside a daemon, with --tpm: exit %d\n%s", code, stderr)
	}
	ln.Close()
	url, stop, stderr := serveFleetCLI(t, append(serve, "fleet-authority")...)
	// While it serves, no daemon starts on this state (the serve lock).
	if _, errOut, code := run(t, nil, "--tpm", h.swtpm.Spec, "--state-dir", h.dir, "serve", "--socket", filepath.Join(t.TempDir(), "d.sock"), "--socket-group", ""); code != api.ExitState || !strings.Contains(errOut, "another process serves") {
		t.Fatalf("a daemon beside fleet serve --authority-key: exit %d\n%s", code, errOut)
	}
	tlsCA := filepath.Join(h.dir, "fleet", "tls.crt")
	out, errOut, code := run(t, nil, "fleet", "authority", "--endpoint", url, "--ca-cert", tlsCA)
	if code != 0 {
		t.Fatalf("fleet authority: %s", errOut)
	}
	if c := stop(); c != 0 {
		t.Fatalf("fleet serve exited %d: %s", c, stderr.String())
	}
	want := h.must("key", "pub", "fleet-authority")
	if strings.TrimSpace(out) != strings.TrimSpace(want) {
		t.Fatalf("fleet authority:\n%s\nkey pub:\n%s", out, want)
	}
}

// TestFleetFirmwarePolicy: a class whose policy lists the firmware
// releases it allows. A device whose boot hook verified an allowed release
// (PCR 12 its first extend after reset) passes; after a tampered boot
// (the hook's failed verdict) it fails with firmware_failed; after two
// verifications in one boot (PCR 12 no longer the good value) it fails.
func TestFleetFirmwarePolicy(t *testing.T) {
	c, p, _, v2 := fwSetup(t)
	c.expect(t, 0, "provision", "--ek-ca", ekCAFile(t, c.swtpm))
	e := startEndpoint(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"), c.swtpm)
	var m struct {
		SHA256 string `json:"manifest_sha256"`
	}
	if err := json.Unmarshal([]byte(c.expect(t, 0, "fw", "manifest", "show", v2, "-o", "json")), &m); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.token), 0o600); err != nil {
		t.Fatal(err)
	}
	c.expect(t, 0, "fleet", "policy", "set", "--class", "gateway", "--manifest", m.SHA256, "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile)
	boot := func(args ...string) {
		t.Helper()
		c.swtpm.Restart(false)
		c.swtpm.CloseTPM()
		for _, a := range args {
			c.run("fw", "verify", "--manifest", v2, "--root", p(a))
		}
	}
	boot("images")
	c.expect(t, 0, "attest", "enroll", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--class", "gateway")
	c.expect(t, 0, "attest", "now", "--ca-cert", e.ca)
	if err := os.MkdirAll(p("evil"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("evil/boot.bin"), []byte("bootkit"), 0o644); err != nil {
		t.Fatal(err)
	}
	boot("evil")
	if out := c.expect(t, api.ExitAttestFailed, "attest", "now", "--ca-cert", e.ca); !strings.Contains(out, fleet.CodeFirmwareFailed) {
		t.Fatalf("after a tampered boot:\n%s", out)
	}
	boot("images", "images")
	if out := c.expect(t, api.ExitAttestFailed, "attest", "now", "--ca-cert", e.ca); !strings.Contains(out, "2 verdicts") {
		t.Fatalf("after two verifications in one boot:\n%s", out)
	}
	boot("images")
	c.expect(t, 0, "attest", "now", "--ca-cert", e.ca)
}

// TestFleetDelivery: after a passing attestation, attest fetch installs the
// class's secret sealed to the device's TPM, and attest secret unseals it;
// nothing on the wire holds it in the clear; the same delivery imports on
// no other TPM (the TPM refuses the wrapper); after a PCR change the secret
// stays sealed (exit 3); a failing device gets nothing; and root on the
// device cannot duplicate the delivered object out of its TPM.
func TestFleetDelivery(t *testing.T) {
	a, b := fleetDevice(t), fleetDevice(t)
	e := startEndpoint(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"), a.swtpm, b.swtpm)
	for _, d := range []*cliEnv{a, b} {
		d.expect(t, 0, "attest", "enroll", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--class", "gateway")
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.token), 0o600); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "wifi")
	secret := []byte("correct horse battery staple")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	op := []string{"--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile}
	a.expect(t, 0, append([]string{"fleet", "secret", "put", "--class", "gateway", "--name", "wifi", "--in", secretFile}, op...)...)
	// Under a trust-on-first-use baseline nothing is delivered: the
	// operator sets the class's golden values first (here from A's boot).
	if out := a.expect(t, 0, "attest", "fetch", "--ca-cert", e.ca); !strings.Contains(out, fleet.CodeWithheld) || strings.Contains(out, "installed") {
		t.Fatalf("fetch under a baseline:\n%s", out)
	}
	golden := filepath.Join(t.TempDir(), "golden.json")
	if err := os.WriteFile(golden, []byte(a.expect(t, 0, "tpm", "pcr", "read", "--pcrs", "0,1,2,3,4,5,6,7,12", "-o", "json")), 0o600); err != nil {
		t.Fatal(err)
	}
	a.expect(t, 0, append([]string{"fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden}, op...)...)
	if out := a.expect(t, 0, append([]string{"fleet", "secret", "list", "--class", "gateway", "-o", "json"}, op...)...); !strings.Contains(out, `"wifi"`) || strings.Contains(out, "horse") {
		t.Fatalf("secret list:\n%s", out)
	}
	if out := a.expect(t, 0, "attest", "fetch", "--ca-cert", e.ca); !strings.Contains(out, "installed wifi") {
		t.Fatalf("fetch:\n%s", out)
	}
	if got := a.expect(t, 0, "attest", "secret", "wifi"); got != string(secret) {
		t.Fatalf("unsealed %q", got)
	}

	// The evidence and the delivery on the wire, as the device gets it.
	v := fetchOnWire(t, e, a, 1)
	wire, _ := json.Marshal(v)
	if bytes.Contains(wire, secret) || bytes.Contains(wire, []byte(base64.StdEncoding.EncodeToString(secret))) {
		t.Fatal("the secret is in the clear in the endpoint's answer")
	}
	// On B's TPM, with B's EK: the TPM refuses the wrapper.
	dl := v.Deliveries[0]
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](dl.Public)
	if err != nil {
		t.Fatal(err)
	}
	b.swtpm.Reopen()
	tb := b.swtpm.TPM
	ekB, flush, err := tb.EK(tpm.RSAEKHandle, rsaEKPublic(t, tb), tpm2.RSAEKTemplate)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := tb.EKPolicySession()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.ImportWrapped(ekB, ps.Session(), *pub, dl.Duplicate, dl.Seed); err == nil {
		t.Fatal("A's delivery imported on B's TPM")
	}
	ps.Close()
	flush()
	b.swtpm.CloseTPM()
	// Root on A: TPM2_Duplicate of the delivered object, through a session
	// that satisfies its PCRs and names Duplicate: the policy is not the
	// object's, the TPM refuses.
	ta, obj, done := importAsRoot(t, a, dl)
	dup, err := ta.StartPolicySession(false)
	if err != nil {
		t.Fatal(err)
	}
	sel := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{}}
	for _, i := range dl.PCRs["sha256"] {
		sel.Values[i] = make([]byte, 32)
	}
	if err := dup.PolicyPCR(sel.Selection(), nil); err != nil {
		t.Fatal(err)
	}
	if err := dup.PolicyCommandCode(tpm2.TPMCCDuplicate); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.Duplicate{ObjectHandle: obj.Auth(dup.Session()), NewParentHandle: tpm2.NamedHandle{Handle: tpm2.TPMRHNull},
		Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}}).Execute(ta); err == nil {
		t.Fatal("the delivered secret was duplicated out of the TPM")
	}
	dup.Close()
	done()

	// A changed boot: the secret stays sealed; the device fails and gets
	// nothing new.
	a.expect(t, 0, "tpm", "pcr", "extend", "7", "--data", "changed")
	a.expect(t, api.ExitPolicy, "attest", "secret", "wifi")
	a.expect(t, api.ExitAttestFailed, "attest", "fetch", "--ca-cert", e.ca)
}

// rsaEKPublic is the RSA EK public area of the open TPM tp, from its
// certificate.
func rsaEKPublic(t *testing.T, tp *tpm.TPM) tpm2.TPMTPublic {
	t.Helper()
	der, err := tp.ReadNV(0x01c00002)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := attest.ParseEKCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := attest.EKPublic(cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestFleetThroughDaemon: with provd serve running (it holds the state and
// the TPM), attest enroll, now, fetch and secret do the TPM's part through
// the daemon's API, as root (the officer) on a device.
func TestFleetThroughDaemon(t *testing.T) {
	d := fleetDevice(t)
	e := startEndpoint(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"), d.swtpm)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.token), 0o600); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(secretFile, []byte("through the daemon"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.expect(t, 0, "fleet", "secret", "put", "--class", "gateway", "--name", "s", "--in", secretFile, "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile)
	golden := filepath.Join(t.TempDir(), "golden.json")
	if err := os.WriteFile(golden, []byte(d.expect(t, 0, "tpm", "pcr", "read", "--pcrs", "0,1,2,3,4,5,6,7,12", "-o", "json")), 0o600); err != nil {
		t.Fatal(err)
	}
	d.expect(t, 0, "fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden, "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile)

	d.swtpm.Reopen()
	ag, err := agent.New(agent.Config{TPM: d.swtpm.TPM, StateDir: d.dir})
	if err != nil {
		t.Fatal(err)
	}
	root := server.RoleMembers{UIDs: []int{0}}
	srv, err := server.New(server.Options{Agent: ag, TPM: d.swtpm.TPM, Roles: &server.Roles{Officer: root, User: root}, ExitCode: cli.ExitCode})
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
	env := map[string]string{"PROVD_SOCKET": sock, "PROVD_STATE_DIR": d.dir}
	daemon := func(want int, args ...string) string {
		t.Helper()
		out, stderr, code := run(t, env, args...)
		if code != want {
			t.Fatalf("provd %s through the daemon: exit %d, want %d\n%s%s", strings.Join(args, " "), code, want, out, stderr)
		}
		return out
	}
	daemon(0, "attest", "enroll", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--class", "gateway")
	daemon(0, "attest", "now", "--ca-cert", e.ca)
	if out := daemon(0, "attest", "fetch", "--ca-cert", e.ca); !strings.Contains(out, "installed s") {
		t.Fatalf("fetch:\n%s", out)
	}
	if out := daemon(0, "attest", "secret", "s"); out != "through the daemon" {
		t.Fatalf("secret: %q", out)
	}
	// status shows the last verdict the daemon recorded.
	if out := daemon(0, "status"); !strings.Contains(out, "attestation: pass") {
		t.Fatalf("status:\n%s", out)
	}
	// The endpoint's authority key is never used through a daemon, which
	// signs with any key for every member of its group (found by review).
	daemon(0, "key", "create", "fleet-authority", "--type", "ecc-p256")
	if _, stderr, code := run(t, env, "fleet", "serve", "--listen", "127.0.0.1:0", "--ek-ca", ekCAFile(t, d.swtpm), "--authority-key", "fleet-authority"); code != api.ExitNotPermitted || !strings.Contains(stderr, "daemon answers") {
		t.Fatalf("fleet serve --authority-key beside a daemon: exit %d\n%s", code, stderr)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	d.swtpm.CloseTPM()
}

// fetchOnWire attests device c with fetch as attest fetch does and returns
// the endpoint's verdict as it crosses the wire, with want deliveries.
func fetchOnWire(t *testing.T, e *endpoint, c *cliEnv, want int) fleetapi.Verdict {
	t.Helper()
	ctx := context.Background()
	dev := e.client(t, "")
	id := deviceID(t, c)
	ch, err := dev.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	req := evidence(t, c, id, ch)
	req.Fetch = true
	v, err := dev.Attest(ctx, req)
	if err != nil || !v.Pass || len(v.Deliveries) != want {
		t.Fatalf("%+v %v", v, err)
	}
	return v
}

// importAsRoot imports delivery dl on c's TPM under its RSA EK and loads
// it, as root on the device can without provd: the TPM, the object, and
// what flushes both and closes the TPM.
func importAsRoot(t *testing.T, c *cliEnv, dl fleetapi.Delivery) (*tpm.TPM, tpm.Object, func()) {
	t.Helper()
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](dl.Public)
	if err != nil {
		t.Fatal(err)
	}
	c.swtpm.Reopen()
	tp := c.swtpm.TPM
	ek, flushEK, err := tp.EK(tpm.RSAEKHandle, rsaEKPublic(t, tp), tpm2.RSAEKTemplate)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := tp.EKPolicySession()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.ImportWrapped(ek, ps.Session(), *pub, dl.Duplicate, dl.Seed)
	ps.Close()
	if err != nil {
		t.Fatal(err)
	}
	ps, err = tp.EKPolicySession()
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tp.Load(ek, ps.Session(), blob)
	ps.Close()
	if err != nil {
		t.Fatal(err)
	}
	return tp, obj, func() {
		_ = tp.Flush(obj.Handle)
		_ = flushEK()
		c.swtpm.CloseTPM()
	}
}
