package tpmkey_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/agent/tpmkey"
)

// A wedged daemon: it answers the key's lookup, then never answers a sign.
// Sign ends at the Key's timeout, SignContext and CSR at their context's end.
func TestCallsEndOnAWedgedDaemon(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hang := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/keys/public" {
			json.NewEncoder(w).Encode(map[string]any{
				"key":            map[string]any{"name": "k", "kind": "created", "type": "ecc-p256", "usage": "sign"},
				"public_key_der": der,
			})
			return
		}
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { close(hang); srv.Close() })

	key, err := tpmkey.New(context.Background(), client.New(sock), "k", tpmkey.WithTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	ended := func(what string, f func() error) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				t.Errorf("%s: %v, want the context's end", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still blocked on a wedged daemon", what)
		}
	}
	ended("Sign", func() error { _, err := key.Sign(rand.Reader, d[:], crypto.SHA256); return err })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	ended("CSR", func() error { _, err := tpmkey.CSR(ctx, key, pkix.Name{CommonName: "x"}, nil); return err })
}
