package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// fakeLookup knows root, provd and provd-admin.
type fakeLookup struct{}

func (fakeLookup) UserID(name string) (int, error) {
	if name == "root" {
		return 0, nil
	}
	return 0, errors.New("does not exist")
}

func (fakeLookup) GroupID(name string) (int, error) {
	switch name {
	case "provd":
		return 990, nil
	case "provd-admin":
		return 991, nil
	}
	return 0, errors.New("does not exist")
}

func TestShippedConfig(t *testing.T) {
	cfg, err := LoadConfig("../../systemd/provd.yaml", fakeLookup{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TPM != "/dev/tpmrm0" || cfg.Socket.Path != DefaultSocket || cfg.Socket.Mode != 0o660 || cfg.Socket.Group != "provd" || cfg.LogLevel != slog.LevelInfo {
		t.Errorf("config %+v", cfg)
	}
	r := cfg.Roles
	if !slices.Equal(r.Officer.UIDs, []int{0}) || !slices.Equal(r.Officer.GIDs, []int{991}) ||
		!slices.Equal(r.User.UIDs, []int{0}) || !slices.Equal(r.User.GIDs, []int{990}) {
		t.Errorf("roles %+v", r)
	}
	for _, tc := range []struct {
		c    Caller
		want Role
	}{
		{Caller{UID: 0}, RoleAny},
		{Caller{UID: 1000, GID: 1000, Groups: []int{990}}, RoleUser},
		{Caller{UID: 1000, GID: 991}, RoleOfficer},
		{Caller{UID: 1000, GID: 1000, Groups: []int{27, 991, 990}}, RoleAny},
		{Caller{UID: 65534, GID: 65534}, 0},
	} {
		if got := r.Of(tc.c); got != tc.want {
			t.Errorf("%v: role %v, want %v", tc.c, got, tc.want)
		}
	}
}

func TestConfigValues(t *testing.T) {
	cfg, err := ParseConfig("t.yaml", []byte(`
socket:
  mode: "0600"
log:
  level: debug
limits:
  request_timeout: 5s
  max_waiting: 8
roles:
  crypto-officer:
    users: [root, 1001]
  user:
    groups: [provd, 2000]
`), fakeLookup{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket.Mode != 0o600 || cfg.LogLevel != slog.LevelDebug || cfg.RequestTimeout != 5*time.Second || cfg.MaxWaiting != 8 {
		t.Errorf("config %+v", cfg)
	}
	if !slices.Equal(cfg.Roles.Officer.UIDs, []int{0, 1001}) || cfg.Roles.Officer.GIDs != nil || !slices.Equal(cfg.Roles.User.GIDs, []int{990, 2000}) {
		t.Errorf("roles %+v", cfg.Roles)
	}
}

// Every invalid file is refused with its line.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		line       int
		says       string
	}{
		{"empty", "", 1, "empty"},
		{"unknown top key", "tpm:\n  device: /dev/tpm0\nsockets:\n  path: /x\n", 3, "sockets"},
		{"unknown nested key", "socket:\n  path: /run/x.sock\n  mdoe: \"0660\"\n", 3, "mdoe"},
		{"unknown role", "roles:\n  admin:\n    users: [root]\n", 2, "admin"},
		{"relative socket", "socket:\n  path: run/provd.sock\n", 2, "absolute"},
		{"bad mode", "socket:\n  mode: rw\n", 2, "octal"},
		{"mode without owner rw", "socket:\n  mode: \"0060\"\n", 2, "owner"},
		{"bad level", "log:\n  level: loud\n", 2, "level"},
		{"bad timeout", "limits:\n  request_timeout: forever\n", 2, "request_timeout"},
		{"bad max_waiting", "limits:\n  max_waiting: 0\n", 2, "max_waiting"},
		{"unknown user", "roles:\n  user:\n    users: [root, mallory]\n", 3, "mallory"},
		{"unknown group", "roles:\n  crypto-officer:\n    groups:\n      - provd-admin\n      - wheel\n", 5, "wheel"},
		{"list not scalar", "roles:\n  user:\n    users: [[root]]\n", 3, "single value"},
		{"type error", "tpm: [1, 2]\n", 1, "wrong type"},
		{"empty device", "tpm:\n  device: \"\"\n", 2, "empty"},
		{"two documents", "log:\n  level: info\n---\nlog:\n  level: debug\n", 3, "second"},
		{"not yaml", "tpm: {device: [\n", 1, ""},
		{"relative ek_ca", "log:\n  level: info\nek_ca: ek-roots.pem\n", 3, "absolute"},
		{"missing ek_ca", "ek_ca: /nonexistent/ek-roots.pem\n", 1, "ek_ca"},
		{"ek_ca a list", "ek_ca: [/a.pem, /b.pem]\n", 1, "single value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("provd.yaml", []byte(tc.yaml), fakeLookup{})
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			if want := fmt.Sprintf("line %d", tc.line); !strings.Contains(err.Error(), want) && !strings.Contains(err.Error(), fmt.Sprintf("provd.yaml:%d:", tc.line)) {
				t.Errorf("%v: does not name %s", err, want)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%v: does not mention %q", err, tc.says)
			}
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	cfg, notes := DefaultConfig(fakeLookup{})
	if len(notes) != 0 || cfg.Roles.Of(Caller{UID: 0}) != RoleAny || cfg.Roles.Of(Caller{UID: 5, GID: 5, Groups: []int{990}}) != RoleUser {
		t.Errorf("defaults %+v %v", cfg.Roles, notes)
	}
	_, err := LoadConfig(t.TempDir()+"/none.yaml", fakeLookup{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// ek_ca names the PEM bundle of manufacturer certificates; it is read and
// checked at load (the certificates every request without its own will be
// verified with), and a file that holds no certificate, or something else,
// is refused with the line.
func TestConfigEKCA(t *testing.T) {
	dir := t.TempDir()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "EK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	good := write("ek-roots.pem", bundle)
	cfg, err := ParseConfig("provd.yaml", []byte("ek_ca: "+good+"\n"), fakeLookup{})
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.EKCA) != string(bundle) || cfg.EKCAPath != good {
		t.Errorf("ek_ca: %q from %q", cfg.EKCA, cfg.EKCAPath)
	}
	if cfg, err := ParseConfig("provd.yaml", []byte("log:\n  level: info\n"), fakeLookup{}); err != nil || cfg.EKCA != nil {
		t.Errorf("without ek_ca: %q, %v", cfg.EKCA, err)
	}
	for name, b := range map[string][]byte{
		"empty":             nil,
		"not PEM":           []byte("not a certificate"),
		"a private key":     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}),
		"a broken block":    append(append([]byte(nil), bundle...), "-----BEGIN CERTIFICATE-----\n!!\n"...),
		"not a certificate": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0}}),
	} {
		p := write(strings.ReplaceAll(name, " ", "-")+".pem", b)
		_, err := ParseConfig("provd.yaml", []byte("log:\n  level: info\nek_ca: "+p+"\n"), fakeLookup{})
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "provd.yaml:3:") {
			t.Errorf("ek_ca %s: %v, want ErrConfig at line 3", name, err)
		}
	}
}

// The configured EK CA fills requests that bring none, never one that
// brings its own; a reload (Reconfigure) swaps it for new requests.
func TestEKCADefault(t *testing.T) {
	s := newServer(Options{Roles: &Roles{}, EKCA: []byte("configured")})
	if got := s.withEKCA(api.IdentityRequest{}); string(got.EKCA) != "configured" {
		t.Errorf("a request without a bundle gets %q", got.EKCA)
	}
	if got := s.withEKCA(api.IdentityRequest{EKCA: []byte("own")}); string(got.EKCA) != "own" {
		t.Errorf("a request with its own bundle gets %q", got.EKCA)
	}
	s.Reconfigure(&Roles{}, time.Second, []byte("reloaded"))
	if got := s.withEKCA(api.IdentityRequest{}); string(got.EKCA) != "reloaded" {
		t.Errorf("after a reload: %q", got.EKCA)
	}
	s.Reconfigure(&Roles{}, time.Second, nil)
	if got := s.withEKCA(api.IdentityRequest{TrustOnFirstUse: true}); got.EKCA != nil || !got.TrustOnFirstUse {
		t.Errorf("with none configured: %+v", got)
	}
}

// FuzzParseConfig: provd.yaml parses into a config or is refused with an
// error; never a panic, and a config it accepts parses again to the same.
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile("../../systemd/provd.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("roles:\n  officer:\n    users: [root]\n"))
	f.Add([]byte("request_timeout: 30s\nek_ca: /nonexistent\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data, fakeLookup{})
		if err != nil {
			return
		}
		again, err := ParseConfig("fuzz.yaml", data, fakeLookup{})
		if err != nil || !reflect.DeepEqual(cfg, again) {
			t.Fatalf("the same config parsed twice differs: %v", err)
		}
	})
}
