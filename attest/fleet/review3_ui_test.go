package fleet_test

// Found by a third adversarial review of the fleet endpoint; each broke
// it before its fix and is kept as a test.

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/attest/fleet"
)

// TestUICookieIsNotTheToken: the sign-in cookie's value is the
// operator's bearer token itself. Signing out only asks the browser to drop
// it: a cookie value captured before (a shared browser profile, a
// TLS-terminating proxy's log, the disk) stays valid for the page after
// sign-out and past its 8 h Max-Age, and is a full operator credential for
// the write API (secrets, policies, revocation), forever.
func TestUICookieIsNotTheToken(t *testing.T) {
	st, err := fleet.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const token = "0123456789abcdef0123456789abcdef"
	srv := httptest.NewTLSServer((&fleet.Server{E: fleet.New(fleet.Config{Store: st}), Operators: [][32]byte{fleet.TokenHash(token)}}).Handler())
	defer srv.Close()
	cl := srv.Client()
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	rsp, err := cl.PostForm(srv.URL+"/ui/login", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	rsp.Body.Close()
	var stolen string
	for _, c := range rsp.Cookies() {
		if c.Name == "provd_operator" {
			stolen = c.Value
		}
	}
	if _, err := cl.Post(srv.URL+"/ui/logout", "", nil); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/ui/", nil)
	req.AddCookie(&http.Cookie{Name: "provd_operator", Value: stolen})
	rsp, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(rsp.Body)
	rsp.Body.Close()
	pageAfterLogout := rsp.StatusCode == 200 && strings.Contains(string(body), `id="devices"`)
	req, _ = http.NewRequest("PUT", srv.URL+"/v1/secrets/gateway/wifi", strings.NewReader(`{"value":"YXR0YWNrZXI="}`))
	req.Header.Set("Authorization", "Bearer "+stolen)
	rsp, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rsp.Body.Close()
	if stolen == token && rsp.StatusCode == http.StatusOK {
		t.Fatalf("BREAK: the UI cookie is the raw operator token: after sign-out it still opens the page (%v) and replaces class gateway's secret through PUT /v1/secrets (HTTP %d)", pageAfterLogout, rsp.StatusCode)
	}
}
