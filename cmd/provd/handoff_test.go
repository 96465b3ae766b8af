package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// TestHandOffToProvdFleet: provd, the device's binary, links no fleet
// endpoint (test/arch: device-binary-without-the-endpoint); `provd fleet
// serve` and `provd man` run provd-fleet from provd's own directory with
// the same arguments, and without it they fail with a clear error and
// ExitNotFound, having created nothing.
func TestHandOffToProvdFleet(t *testing.T) {
	dir := t.TempDir()
	bin := buildProvd(t, dir)
	if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "provd-fleet"), "../provd-fleet").CombinedOutput(); err != nil {
		t.Fatalf("go build provd-fleet: %v\n%s", err, out)
	}
	ca := filepath.Join(dir, "ek-ca.pem")
	if err := os.WriteFile(ca, selfSignedPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	env := append(os.Environ(), "PROVD_STATE_DIR="+state)

	// fleet serve: provd-fleet serves, in provd's process (exec, same pid).
	var stderr syncBuffer
	cmd := exec.Command(bin, "fleet", "serve", "--listen", "127.0.0.1:0", "--ek-ca", ca)
	cmd.Env, cmd.Stderr = env, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, func() bool { return strings.Contains(stderr.String(), "provd fleet: serving https://127.0.0.1:") }, "provd fleet serve through provd-fleet")
	exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "exe"))
	if err != nil || filepath.Base(exe) != "provd-fleet" {
		t.Errorf("the serving process runs %q (%v), want provd-fleet", exe, err)
	}
	if _, err := os.Stat(filepath.Join(state, "fleet", "tls.crt")); err != nil {
		t.Errorf("the endpoint's certificate: %v", err)
	}

	// man: provd-fleet writes the pages, provd's tree and the endpoint's alike.
	man := filepath.Join(dir, "man")
	if out, err := exec.Command(bin, "man", man).CombinedOutput(); err != nil {
		t.Fatalf("provd man: %v\n%s", err, out)
	}
	for _, page := range []string{"provd-fleet-serve.8", "provd-key-sign.8", "provd-exit-codes.7"} {
		if _, err := os.Stat(filepath.Join(man, page)); err != nil {
			t.Errorf("man page %s: %v", page, err)
		}
	}

	// Without provd-fleet: a clear error, ExitNotFound, nothing made.
	if err := os.Remove(filepath.Join(dir, "provd-fleet")); err != nil {
		t.Fatal(err)
	}
	// A planted provd-fleet in $PATH and in the working directory is never
	// run: only provd's own directory is searched.
	planted := filepath.Join(dir, "planted")
	ran := filepath.Join(dir, "planted-ran")
	if err := os.MkdirAll(planted, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(planted, "provd-fleet"), []byte("#!/bin/sh\ntouch "+ran+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh")
	for _, args := range [][]string{
		{"fleet", "serve", "--listen", "127.0.0.1:0", "--ek-ca", ca},
		{"man", filepath.Join(dir, "man2")},
	} {
		c := exec.Command(bin, args...)
		c.Dir = planted
		c.Env = append(os.Environ(), "PROVD_STATE_DIR="+fresh, "PATH="+planted+":"+os.Getenv("PATH"))
		out, err := c.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != api.ExitNotFound {
			t.Errorf("provd %s without provd-fleet: %v, want exit %d\n%s", args[0], err, api.ExitNotFound, out)
		}
		if !strings.Contains(string(out), "provd-fleet") {
			t.Errorf("provd %s without provd-fleet: %q does not name provd-fleet", args[0], out)
		}
	}
	for _, p := range []string{fresh, filepath.Join(dir, "man2"), ran} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after a refused hand-off: %v, want nothing made", p, err)
		}
	}
}

// selfSignedPEM is a CA certificate for --ek-ca.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test EK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
