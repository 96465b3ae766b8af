package fleetapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleetapi"
)

// review59Seen is what a server behind a redirect received.
type review59Seen struct {
	mu    sync.Mutex
	n     int
	auth  []string
	bodys []string
}

func (s *review59Seen) handler() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.n++
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.bodys = append(s.bodys, string(b))
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"class":"c","name":"n","kind":"secret","updated_at":"2026-01-01T00:00:00Z"}`)
	}
}

// review59Endpoint is the pinned endpoint (TLS 1.3, its certificate the
// client's --ca-cert) answering every request with a 307 to location(r).
func review59Endpoint(t *testing.T, location func(r *http.Request) string) (*httptest.Server, []byte) {
	t.Helper()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, location(r), http.StatusTemporaryRedirect)
	}))
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	pin := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	return ts, pin
}

// FLAW (failed before the mend): the client's "TLS always" (NewClient refuses http://, found by an
// earlier review: the operator's token went in the clear) holds for the
// first hop only. The http.Client follows redirects with Go's defaults: a
// 307 from the pinned endpoint to http:// on the same host name (another
// port) is followed in cleartext, and Go forwards the Authorization header
// to the same host name whatever the scheme or port. Attacker: whatever
// answers on the endpoint's pinned TLS connection with a redirect (a
// hostile or compromised endpoint or TLS-terminating proxy in front of it);
// A8 on the network then reads the operator's bearer token and the
// request's body (here a class secret being stored) off the wire, and the
// --ca-cert pin is bypassed for every hop after the first. Fix: the API
// never redirects: set Client.HTTP.CheckRedirect to return
// http.ErrUseLastResponse (or refuse any hop that is not https to the
// same host and port).
func TestReview59RedirectCarriesTheTokenInTheClear(t *testing.T) {
	var seen review59Seen
	plain := httptest.NewServer(seen.handler())
	defer plain.Close()
	_, port, _ := net.SplitHostPort(plain.Listener.Addr().String())
	ts, pin := review59Endpoint(t, func(r *http.Request) string {
		return "http://127.0.0.1:" + port + r.URL.Path
	})
	c, err := fleetapi.NewClient(ts.URL, pin, "operator-token-secret")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.PutSecret(ctx, "c", "n", fleetapi.KindSecret, []byte("the class secret"))
	seen.mu.Lock()
	defer seen.mu.Unlock()
	if seen.n > 0 {
		t.Errorf("the pinned https endpoint's redirect was followed to plain http (PutSecret err %v): the cleartext server got %d request(s), Authorization %q, bodies %q",
			err, seen.n, seen.auth, seen.bodys)
	}
}

// FLAW (failed before the mend): a 307 or 308 keeps the method and body, and Go resends a body it
// can replay (bytes.Reader) to any host: only the Authorization header is
// dropped for another host name. A redirect from the pinned endpoint to
// http://another-host sends the operator's secret or PKCS#8 signing key
// (PutSecret), or a device's credential secret (Activate), in cleartext to
// a host the pin never vouched for. Attacker: as above (whatever can answer
// a redirect on the pinned connection), plus A8 on the path to the other
// host. Fix: as above, follow no redirect.
func TestReview59RedirectResendsTheSecretToAnotherHost(t *testing.T) {
	var seen review59Seen
	plain := httptest.NewServer(seen.handler())
	defer plain.Close()
	_, port, _ := net.SplitHostPort(plain.Listener.Addr().String())
	ts, pin := review59Endpoint(t, func(r *http.Request) string {
		return "http://localhost:" + port + r.URL.Path // another host name
	})
	c, err := fleetapi.NewClient(ts.URL, pin, "operator-token-secret")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.PutSecret(ctx, "c", "n", fleetapi.KindSecret, []byte("the class secret"))
	seen.mu.Lock()
	defer seen.mu.Unlock()
	for i, b := range seen.bodys {
		if strings.Contains(b, "dGhlIGNsYXNzIHNlY3JldA") { // base64 of the secret
			t.Errorf("the secret was resent in cleartext to another host after a redirect (PutSecret err %v): request %d body %q, Authorization %q", err, i, b, seen.auth[i])
		}
	}
}

// Held: a redirect to https on a host whose certificate is not the pinned
// one fails the TLS handshake: the pin (RootCAs) applies to every TLS hop,
// so no request reaches the unpinned server.
func TestReview59RedirectToAnUnpinnedHTTPSHostIsRefused(t *testing.T) {
	var seen review59Seen
	other := httptest.NewUnstartedServer(seen.handler())
	other.TLS = &tls.Config{Certificates: []tls.Certificate{review59Cert(t)}} // not the pinned one
	other.StartTLS()
	defer other.Close()
	ts, pin := review59Endpoint(t, func(r *http.Request) string { return other.URL + r.URL.Path })
	c, err := fleetapi.NewClient(ts.URL, pin, "operator-token-secret")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.PutSecret(ctx, "c", "n", fleetapi.KindSecret, []byte("the class secret")); err == nil {
		t.Fatal("a redirect to an unpinned https server succeeded")
	}
	seen.mu.Lock()
	defer seen.mu.Unlock()
	if seen.n != 0 {
		t.Fatalf("the unpinned server got %d request(s)", seen.n)
	}
}

// Held: an impersonated endpoint (another certificate for the same address,
// as A8 on the path would present) and a pinned endpoint held to TLS 1.2
// (a downgrade) are both refused before a byte of the request is sent.
func TestReview59ImpersonatedOrDowngradedEndpointRefused(t *testing.T) {
	var seen review59Seen
	real := httptest.NewTLSServer(seen.handler())
	defer real.Close()
	pin := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: real.Certificate().Raw})

	// Another key and certificate for the same address (127.0.0.1): an
	// impersonator.
	fake := httptest.NewUnstartedServer(seen.handler())
	fake.TLS = &tls.Config{Certificates: []tls.Certificate{review59Cert(t)}}
	fake.StartTLS()
	defer fake.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := fleetapi.NewClient(fake.URL, pin, "tok")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Policy(ctx, "c"); err == nil {
		t.Fatal("an endpoint with an unpinned certificate was trusted")
	}

	// TLS 1.2 at most, with the pinned certificate.
	old := httptest.NewUnstartedServer(seen.handler())
	old.TLS = &tls.Config{MaxVersion: tls.VersionTLS12}
	old.StartTLS()
	defer old.Close()
	oldPin := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Certificate().Raw})
	c, err = fleetapi.NewClient(old.URL, oldPin, "tok")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Policy(ctx, "c"); err == nil {
		t.Fatal("a TLS 1.2 endpoint was accepted")
	}
	seen.mu.Lock()
	defer seen.mu.Unlock()
	if seen.n != 0 {
		t.Fatalf("%d request(s) reached an impersonated or downgraded endpoint", seen.n)
	}
}

// review59Cert is a fresh self-signed certificate for 127.0.0.1, of a key
// no other server here holds.
func review59Cert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(59),
		Subject:      pkix.Name{CommonName: "impostor"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost", "example.com"},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// review59Pinned starts ts with TLS 1.3 (closed at the test's end) and
// returns a client that pins its certificate and sends token.
func review59Pinned(t *testing.T, ts *httptest.Server, token string) *fleetapi.Client {
	t.Helper()
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	pin := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	c, err := fleetapi.NewClient(ts.URL, pin, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Held: an endpoint that answers 200 and then sends without end costs the
// client at most MaxBody+1 bytes of reading: the call ends with an error
// (the JSON is cut short), well before the client's timeout.
func TestReview59EndlessAnswerIsBounded(t *testing.T) {
	var written atomic.Int64
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"pass":true,"reasons":[],"detail":"`)
		chunk := []byte(strings.Repeat("A", 64<<10))
		for r.Context().Err() == nil {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	c := review59Pinned(t, ts, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := c.Attest(ctx, fleetapi.AttestRequest{DeviceID: "d"})
	if err == nil || v.Pass {
		t.Fatalf("an endless answer was taken: %+v %v", v, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the read was not bounded: %v", err)
	}
}

// Held: a hostile endpoint's 200 answer read two ways: a verdict with
// "pass" twice (false for a reader that keeps the first, true for
// encoding/json, which keeps the last), with a field the device does not
// know, or with data after it, is refused, never taken as a pass.
func TestReview59AmbiguousVerdictRefused(t *testing.T) {
	for name, body := range map[string]string{
		"duplicate pass":       `{"appraisal_id":"a","device_id":"d","pass":false,"reasons":[],"at":"2026-01-01T00:00:00Z","pass":true}`,
		"case-folded pass":     `{"appraisal_id":"a","device_id":"d","pass":false,"reasons":[],"at":"2026-01-01T00:00:00Z","PASS":true}`,
		"unknown field":        `{"appraisal_id":"a","device_id":"d","pass":true,"reasons":[],"at":"2026-01-01T00:00:00Z","golden":true}`,
		"trailing value":       `{"appraisal_id":"a","device_id":"d","pass":false,"reasons":[],"at":"2026-01-01T00:00:00Z"}{"pass":true}`,
		"duplicate delivery":   `{"appraisal_id":"a","device_id":"d","pass":true,"reasons":[],"at":"2026-01-01T00:00:00Z","deliveries":[{"name":"s","name":"t","ek_cert_sha256":"","public":null,"duplicate":null,"seed":null,"pcrs":{}}]}`,
		"nested beyond bounds": `{"appraisal_id":"a","device_id":"d","pass":true,"reasons":[` + strings.Repeat(`[`, 100) + strings.Repeat(`]`, 100) + `],"at":"2026-01-01T00:00:00Z"}`,
	} {
		t.Run(name, func(t *testing.T) {
			c := review59Pinned(t, httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, body)
			})), "")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if v, err := c.Attest(ctx, fleetapi.AttestRequest{DeviceID: "d"}); err == nil {
				t.Fatalf("taken: %+v", v)
			}
		})
	}
}

// Held: the client's own errors never carry the operator's token or the
// request's secret: an error answer that is not the endpoint's JSON, a
// refused TLS handshake and a connection cut mid-answer give errors that
// name the URL and the endpoint's words only. Attacker: anyone reading the
// CLI's output or the logs a failed call leaves (a hostile endpoint can
// only echo what it was sent in its own words, which the client shows as
// the endpoint's).
func TestReview59ErrorsDoNotEchoTheTokenOrTheSecret(t *testing.T) {
	const token, secret = "operator-token-secret", "the class secret"
	handlers := map[string]http.HandlerFunc{
		"plain 500": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "boom")
		},
		"cut mid-answer": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, `{"class":`)
			if hj, ok := w.(http.Hijacker); ok {
				c, _, _ := hj.Hijack()
				_ = c.Close()
			}
		},
	}
	for name, h := range handlers {
		t.Run(name, func(t *testing.T) {
			ts := httptest.NewUnstartedServer(h)
			ts.EnableHTTP2 = false
			c := review59Pinned(t, ts, token)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := c.PutSecret(ctx, "c", "n", fleetapi.KindSecret, []byte(secret))
			if err == nil {
				t.Fatal("no error")
			}
			if s := err.Error(); strings.Contains(s, token) || strings.Contains(s, secret) || strings.Contains(s, "dGhlIGNsYXNzIHNlY3JldA") {
				t.Fatalf("the error echoes the token or the secret: %s", s)
			}
		})
	}
	// A refused handshake (an unpinned certificate).
	ts := httptest.NewUnstartedServer(handlers["plain 500"])
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{review59Cert(t)}}
	ts.StartTLS()
	defer ts.Close()
	real := httptest.NewTLSServer(http.NotFoundHandler())
	defer real.Close()
	c, err := fleetapi.NewClient(ts.URL, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: real.Certificate().Raw}), token)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.PutSecret(ctx, "c", "n", fleetapi.KindSecret, []byte(secret))
	if err == nil || strings.Contains(err.Error(), token) || strings.Contains(err.Error(), secret) {
		t.Fatalf("refused handshake: %v", err)
	}
}
