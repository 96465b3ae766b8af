package cli_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/test/swtpmtest"
)

// foreignCAFile writes a CA that vouches for no TPM of the harness's.
func foreignCAFile(t *testing.T) string {
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
	p := filepath.Join(t.TempDir(), "foreign-ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serveWithConfig runs `provd serve --config FILE` in this process on env's
// TPM (closed first: swtpm serves one client) until the test ends, and
// returns its socket.
func serveWithConfig(t *testing.T, env *swtpmtest.Env, state, config string) string {
	t.Helper()
	env.CloseTPM()
	t.Cleanup(env.Reopen) // after the daemon stops: the harness's leak check
	sock := filepath.Join(t.TempDir(), "provd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"--tpm", env.Spec, "--state-dir", state, "serve", "--config", config,
			"--socket", sock, "--socket-group", ""}, cli.Deps{Stdout: &stderr, Stderr: &stderr, Getenv: func(string) string { return "" }})
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("provd serve: exit %d", code)
		}
	})
	for end := time.Now().Add(30 * time.Second); !client.Answers(ctx, sock); time.Sleep(20 * time.Millisecond) {
		select {
		case code := <-done:
			t.Fatalf("provd serve exited %d before it answered", code)
		default:
		}
		if time.Now().After(end) {
			t.Fatal("provd serve does not answer after 30 s")
		}
	}
	return sock
}

// ek_ca in provd.yaml is the daemon's EK CA for first contact: provision
// and tpm identity through the daemon, with no --ek-ca and no
// $PROVD_EK_CA, verify the EK certificate against it (exit 0 for the
// TPM's CA, 15 for a foreign one, even with --trust-on-first-use); a
// bundle the request brings (--ek-ca, $PROVD_EK_CA) wins over it.
func TestDaemonEKCAFromConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		ca   func(t *testing.T, env *swtpmtest.Env) string
		want int
	}{
		{"the TPM's CA", ekCAFile, api.ExitOK},
		{"a foreign CA", func(t *testing.T, _ *swtpmtest.Env) string { return foreignCAFile(t) }, api.ExitIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := swtpmtest.Start(t)
			good := ekCAFile(t, env)
			config := filepath.Join(t.TempDir(), "provd.yaml")
			uid := os.Getuid()
			if err := os.WriteFile(config, fmt.Appendf(nil, `ek_ca: %s
roles:
  crypto-officer:
    users: [%d]
  user:
    users: [%d]
`, tc.ca(t, env), uid, uid), 0o600); err != nil {
				t.Fatal(err)
			}
			sock := serveWithConfig(t, env, filepath.Join(t.TempDir(), "state"), config)
			// A state dir that does not exist: only the daemon can answer.
			daemon := map[string]string{"PROVD_SOCKET": sock, "PROVD_STATE_DIR": "/nonexistent"}
			if _, stderr, code := run(t, daemon, "tpm", "identity"); code != tc.want {
				t.Errorf("tpm identity: exit %d, want %d\n%s", code, tc.want, stderr)
			}
			_, stderr, code := run(t, daemon, "provision", "--pcrs", "7")
			if code != tc.want {
				t.Fatalf("provision: exit %d, want %d\n%s", code, tc.want, stderr)
			}
			if tc.want == api.ExitOK {
				var st api.Status
				out, _, _ := run(t, daemon, "status", "-o", "json")
				if err := json.Unmarshal([]byte(out), &st); err != nil || st.TPMTrust != api.TrustManufacturer {
					t.Errorf("status after provision: %s (%v)", out, err)
				}
				return
			}
			// Trust on first use does not get past a configured bundle that
			// does not vouch (as with $PROVD_EK_CA: no silent fall back).
			if _, _, code := run(t, daemon, "tpm", "identity", "--trust-on-first-use"); code != api.ExitIdentity {
				t.Errorf("tpm identity --trust-on-first-use with a foreign ek_ca configured: exit %d, want %d", code, api.ExitIdentity)
			}
			// The request's own bundle wins over the configured one.
			if _, stderr, code := run(t, daemon, "tpm", "identity", "--ek-ca", good); code != api.ExitOK {
				t.Errorf("tpm identity --ek-ca with a foreign ek_ca configured: exit %d\n%s", code, stderr)
			}
			withEnv := map[string]string{"PROVD_SOCKET": sock, "PROVD_STATE_DIR": "/nonexistent", "PROVD_EK_CA": good}
			if _, stderr, code := run(t, withEnv, "provision", "--pcrs", "7"); code != api.ExitOK {
				t.Errorf("provision with $PROVD_EK_CA and a foreign ek_ca configured: exit %d\n%s", code, stderr)
			}
		})
	}
}
