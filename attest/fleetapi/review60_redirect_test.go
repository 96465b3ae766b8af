package fleetapi_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleetapi"
)

// Held: the client follows no redirect of any kind, whatever the method
// and whatever the target: 301, 302, 303 (which Go turns into a GET that
// would carry the token), 307 and 308, for an operator's GET (Devices) and
// a POST with a body (PutSecret), to an https server on the same host (a
// port the pinned certificate also vouches for, so only CheckRedirect
// stands in the way), to that host's http://, and to a
// protocol-relative "//127.0.0.1:port" Location. The server behind the
// redirect gets no request, and the call fails. Attacker: whatever answers
// on the endpoint's pinned TLS connection (a compromised endpoint or a
// TLS-terminating proxy in front of it), A8 behind it.
func TestReview60NoRedirectOfAnyKindIsFollowed(t *testing.T) {
	var seen review59Seen
	other := httptest.NewUnstartedServer(seen.handler())
	other.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	other.StartTLS() // httptest's one certificate: the endpoint's pin takes it
	defer other.Close()
	plain := httptest.NewServer(seen.handler())
	defer plain.Close()
	targets := map[string]string{
		"https, same host":  other.URL,
		"http, same host":   plain.URL,
		"protocol-relative": "//" + other.Listener.Addr().String(),
	}
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		for what, target := range targets {
			ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", target+r.URL.Path)
				w.WriteHeader(code)
			}))
			ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
			ts.StartTLS()
			c, err := fleetapi.NewClient(ts.URL, pinOf(ts), "operator-token-secret")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, errGet := c.Devices(ctx)
			_, errPut := c.PutSecret(ctx, "c", "n", fleetapi.KindSecret, []byte("the class secret"))
			cancel()
			ts.Close()
			label := fmt.Sprintf("%d to %s", code, what)
			if errGet == nil || errPut == nil {
				t.Errorf("%s: a redirect answered success (GET %v, POST %v)", label, errGet, errPut)
			}
			seen.mu.Lock()
			if seen.n > 0 {
				t.Errorf("%s: followed: %d request(s), Authorization %q, bodies %q", label, seen.n, seen.auth, seen.bodys)
				seen.n, seen.auth, seen.bodys = 0, nil, nil
			}
			seen.mu.Unlock()
		}
	}
}

// pinOf is ts's certificate as the client's --ca-cert.
func pinOf(ts *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
}
