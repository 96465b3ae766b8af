package systemd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// maxExposure is the highest `systemd-analyze security` rating provd.service
// may have; docs/systemd.md records the current figure.
const maxExposure = 2.0

// analyze runs systemd-analyze, failing (not skipping) when it is missing:
// a hardening regression must not pass silently on a machine without it.
func analyze(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found; apt-get install systemd: %v", err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=")
	err = cmd.Run()
	return out.String(), err
}

// execStarts are the units' ExecStart lines as shipped.
var execStarts = map[string]string{
	"provd.service":           "/usr/bin/provd serve",
	"provd-fw-verify.service": "/usr/bin/provd fw verify --manifest ${PROVD_FW_MANIFEST} --root ${PROVD_FW_ROOT} --commit",
	"provd-attest.service":    "/usr/bin/provd attest now",
}

// testUnits copies the units to a temp dir with ExecStart pointing at
// /bin/true: verify refuses a unit whose binary does not exist, and
// /usr/bin/provd is not installed where the tests run. Nothing else changes.
func testUnits(t *testing.T) (service, socket, fwVerify string) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"provd.service", "provd.socket", "provd-fw-verify.service", "provd-attest.service", "provd-attest.timer"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if exec, ok := execStarts[name]; ok {
			line := []byte("\nExecStart=" + exec + "\n")
			if !bytes.Contains(b, line) {
				t.Fatalf("%s: ExecStart=%s not found", name, exec)
			}
			b = bytes.Replace(b, line, []byte("\nExecStart=/bin/true\n"), 1)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "provd.service"), filepath.Join(dir, "provd.socket"), filepath.Join(dir, "provd-fw-verify.service")
}

func TestUnitsVerify(t *testing.T) {
	service, socket, fwVerify := testUnits(t)
	dir := filepath.Dir(service)
	out, err := analyze(t, "verify", service, socket, fwVerify, filepath.Join(dir, "provd-attest.service"), filepath.Join(dir, "provd-attest.timer"))
	if err != nil || strings.TrimSpace(out) != "" {
		// verify exits 0 on some warnings; any output is a finding.
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for [a-z-]+\.service: ([0-9.]+)`)

func TestUnitsSecurityExposure(t *testing.T) {
	service, _, fwVerify := testUnits(t)
	for _, unit := range []string{service, fwVerify, filepath.Join(filepath.Dir(service), "provd-attest.service")} {
		threshold := strconv.Itoa(int(maxExposure * 10))
		out, err := analyze(t, "security", "--no-pager", "--offline=true", "--threshold="+threshold, unit)
		m := exposureRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no exposure level in systemd-analyze security output (err %v):\n%s", err, out)
		}
		exposure, perr := strconv.ParseFloat(m[1], 64)
		if perr != nil {
			t.Fatal(perr)
		}
		t.Logf("%s exposure: %.1f (limit %.1f)", filepath.Base(unit), exposure, maxExposure)
		if err != nil || exposure > maxExposure {
			t.Errorf("%s: exposure %.1f, want <= %.1f (systemd-analyze: %v):\n%s", filepath.Base(unit), exposure, maxExposure, err, out)
		}
	}
}
