package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

// webDriver drives Debian's chromium through chromedriver's W3C WebDriver
// API: a real headless browser, no test library.
type webDriver struct {
	t       *testing.T
	base    string
	session string
}

func startWebDriver(t *testing.T) *webDriver {
	t.Helper()
	bin, err := exec.LookPath("chromedriver")
	if err != nil {
		t.Fatalf("chromedriver not found (apt-get install chromium chromium-driver): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, fmt.Sprintf("--port=%d", port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	d := &webDriver{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	for i := 0; ; i++ {
		if rsp, err := http.Get(d.base + "/status"); err == nil {
			rsp.Body.Close()
			break
		}
		if i > 100 {
			t.Fatal("chromedriver did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var s struct {
		SessionID string `json:"sessionId"`
	}
	d.call("POST", "/session", map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome", "acceptInsecureCerts": true,
		"goog:chromeOptions": map[string]any{"binary": "/usr/bin/chromium",
			"args": []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir()}},
	}}}, &s)
	d.session = "/session/" + s.SessionID
	t.Cleanup(func() { d.call("DELETE", d.session, nil, nil) })
	return d
}

func (d *webDriver) call(method, path string, in, out any) {
	d.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, d.base+path, body)
	req.Header.Set("Content-Type", "application/json")
	rsp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, _ := io.ReadAll(rsp.Body)
	if rsp.StatusCode != http.StatusOK {
		d.t.Fatalf("webdriver %s %s: %d %s", method, path, rsp.StatusCode, b)
	}
	if out != nil {
		var env struct {
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(b, &env); err != nil {
			d.t.Fatal(err)
		}
		if err := json.Unmarshal(env.Value, out); err != nil {
			d.t.Fatalf("webdriver %s: %v: %s", path, err, env.Value)
		}
	}
}

func (d *webDriver) open(url string) {
	d.call("POST", d.session+"/url", map[string]string{"url": url}, nil)
}

func (d *webDriver) source() string {
	var s string
	d.call("GET", d.session+"/source", nil, &s)
	return s
}

// waitFor polls the page until ok holds for its source (a click's
// navigation may still be under way), and returns the source.
func (d *webDriver) waitFor(what string, ok func(string) bool) string {
	d.t.Helper()
	var src string
	for i := 0; i < 100; i++ {
		if src = d.source(); ok(src) {
			return src
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("%s: the page never showed it:\n%s", what, src)
	return ""
}

func (d *webDriver) element(css string) string {
	var e map[string]string
	d.call("POST", d.session+"/element", map[string]string{"using": "css selector", "value": css}, &e)
	for _, id := range e {
		return id
	}
	d.t.Fatalf("no element %s", css)
	return ""
}

func (d *webDriver) typeInto(css, text string) {
	d.call("POST", d.session+"/element/"+d.element(css)+"/value", map[string]string{"text": text}, nil)
}

func (d *webDriver) click(css string) {
	d.call("POST", d.session+"/element/"+d.element(css)+"/click", map[string]any{}, nil)
}

// TestOperatorPageInBrowser: the operators' page in a real headless
// chromium over TLS: without a token (or with a wrong one) it shows the
// sign-in form and nothing of the fleet; signed in, it lists the devices
// with their last verdicts, and a device's page shows what differs from
// the policy, naming the PCR, and the history. A device's reason text that
// carries markup is shown as text, not run.
func TestOperatorPageInBrowser(t *testing.T) {
	ctx := context.Background()
	st, err := fleet.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	secret := sha256.Sum256([]byte("d"))
	id := strings.Repeat("ab", 32)
	if err := st.PutPending(ctx, fleet.Device{ID: id, Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Activate(ctx, id, secret[:], now); err != nil {
		t.Fatal(err)
	}
	pcr := 7
	for i, a := range []fleet.Appraisal{
		{ID: "a1", DeviceID: id, At: now, Pass: true, Reasons: []fleetapi.Reason{{Code: fleet.CodeBaseline}}},
		{ID: "a2", DeviceID: id, At: now.Add(time.Second), Pass: false, Reasons: []fleetapi.Reason{{Code: fleet.CodePCRPolicy, Bank: "sha256", PCR: &pcr,
			Detail: `quoted 84, the policy says 00 <script>document.title="pwned"</script>`}}},
	} {
		if err := st.RecordAppraisal(ctx, a); err != nil {
			t.Fatal(i, err)
		}
	}
	const token = "the-operators-token"
	srv := httptest.NewUnstartedServer((&fleet.Server{E: fleet.New(fleet.Config{Store: st}), Operators: [][32]byte{fleet.TokenHash(token)}}).Handler())
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()

	d := startWebDriver(t)
	d.open(srv.URL + "/ui/")
	if src := d.source(); !strings.Contains(src, "Operator token") || strings.Contains(src, id[:16]) {
		t.Fatalf("signed out:\n%s", src)
	}
	d.open(srv.URL + "/ui/devices/" + id)
	if src := d.source(); strings.Contains(src, "pcr_policy") {
		t.Fatalf("a device's page without signing in:\n%s", src)
	}
	d.open(srv.URL + "/ui/")
	d.typeInto("input[name=token]", "not-the-token")
	d.click("#signin")
	if src := d.waitFor("a wrong token", func(s string) bool { return strings.Contains(s, "not an operator") }); strings.Contains(src, id[:16]) {
		t.Fatalf("a wrong token:\n%s", src)
	}
	d.typeInto("input[name=token]", token)
	d.click("#signin")
	d.waitFor("the devices", func(s string) bool {
		return strings.Contains(s, id[:16]) && strings.Contains(s, "gateway") && strings.Contains(s, ">fail<")
	})
	d.click("#devices a")
	src := d.waitFor("the device", func(s string) bool { return strings.Contains(s, "History") })
	for _, want := range []string{"What differs from the policy", "pcr_policy sha256 PCR 7", "baseline_tofu", "&lt;script&gt;"} {
		if !strings.Contains(src, want) {
			t.Errorf("the device's page lacks %q:\n%s", want, src)
		}
	}
	var title string
	d.call("GET", d.session+"/title", nil, &title)
	if title != "provd fleet" {
		t.Fatalf("title %q: markup from a reason ran", title)
	}
}
