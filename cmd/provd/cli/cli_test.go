package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/cmd/provd/cli/fleetserver"
	"github.com/provd/provd/test/swtpmtest"
)

// run executes the real command tree in-process, as provd-fleet has it
// (fleet serve and man run here; provd hands them to provd-fleet:
// TestHandOffToProvdFleet in cmd/provd).
func run(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = cli.Main(context.Background(), args, cli.Deps{
		Stdin:  strings.NewReader(""),
		Stdout: &out,
		Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
		Server: fleetserver.Server{},
	})
	return out.String(), errb.String(), code
}

// ekCAFile writes the harness's EK CA bundle to a file, as an operator
// passes it to --ek-ca.
func ekCAFile(t *testing.T, env *swtpmtest.Env) string {
	t.Helper()
	bundle := env.CAPEM()
	p := filepath.Join(t.TempDir(), "ek-ca.pem")
	if err := os.WriteFile(p, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTPMInfoOverSwtpm(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM() // swtpm serves one client at a time
	out, stderr, code := run(t, nil, "--tpm", env.Spec, "tpm", "info", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var info struct {
		Manufacturer string   `json:"manufacturer"`
		PCRBanks     []string `json:"pcr_banks"`
		Curves       []string `json:"curves"`
		EK           []struct {
			Index   string `json:"nv_index"`
			Present bool   `json:"present"`
			Issuer  string `json:"issuer"`
		} `json:"ek_certificates"`
		SRK struct {
			Present bool `json:"present"`
		} `json:"srk"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if info.Manufacturer != "IBM" || len(info.PCRBanks) != 1 || info.PCRBanks[0] != "sha256" {
		t.Errorf("info = %+v", info)
	}
	present := map[string]bool{}
	for _, ek := range info.EK {
		present[ek.Index] = ek.Present
		if ek.Present && !strings.Contains(ek.Issuer, "swtpm-localca") {
			t.Errorf("EK %s issuer %q", ek.Index, ek.Issuer)
		}
	}
	if !present["0x01c00002"] || !present["0x01c00016"] || present["0x01c0000a"] {
		t.Errorf("EK certificates present: %v", present)
	}
	env.Reopen() // for the leak check
}

func TestTPMInfoSim(t *testing.T) {
	dir := t.TempDir()
	out, stderr, code := run(t, map[string]string{"PROVD_TPM": "sim", "PROVD_STATE_DIR": dir}, "tpm", "info")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"Manufacturer", "IBM", "EK cert 0x01c00002", "Go FIPS 140-3 module"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// A second run resumes the same manufactured TPM (same EK).
	out2, _, code := run(t, map[string]string{"PROVD_TPM": "sim", "PROVD_STATE_DIR": dir}, "tpm", "info", "-o", "json")
	if code != 0 || !strings.Contains(out2, "swtpm-localca") {
		t.Fatalf("second sim run: exit %d\n%s", code, out2)
	}
}

// TestTPMRebootSim: tpm reboot power-cycles the sim, so a PCR extended
// before it is back at its reset value after, where a plain second command
// resumes it (Shutdown(STATE)). A TPM that is not the sim is exit 2.
func TestTPMRebootSim(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"PROVD_TPM": "sim", "PROVD_STATE_DIR": dir}
	pcr12 := func() string {
		t.Helper()
		out, stderr, code := run(t, env, "tpm", "pcr", "read", "--pcrs", "12")
		if code != 0 {
			t.Fatalf("pcr read: exit %d: %s", code, stderr)
		}
		return out
	}
	zero := pcr12()
	if _, stderr, code := run(t, env, "tpm", "pcr", "extend", "12", "--data", "x"); code != 0 {
		t.Fatalf("extend: %s", stderr)
	}
	extended := pcr12()
	if extended == zero {
		t.Fatal("the extend did not survive to the next command")
	}
	out, stderr, code := run(t, env, "tpm", "reboot", "-o", "json")
	if code != 0 || !strings.Contains(out, `"rebooted": true`) {
		t.Fatalf("reboot: exit %d: %s%s", code, out, stderr)
	}
	if got := pcr12(); got != zero {
		t.Fatalf("after reboot PCR 12 is\n%s, want\n%s", got, zero)
	}
	swtpm := swtpmtest.Start(t)
	swtpm.CloseTPM()
	defer swtpm.Reopen()
	if _, _, code := run(t, nil, "--tpm", swtpm.Spec, "tpm", "reboot"); code != api.ExitUsage {
		t.Fatalf("reboot of a TPM that is not the sim: exit %d", code)
	}
}

// Under -o json an error is JSON on stderr, in the daemon's form.
func TestJSONErrors(t *testing.T) {
	_, stderr, code := run(t, nil, "-o", "json", "--tpm", "swtpm://127.0.0.1:1", "tpm", "info")
	var body api.ErrorBody
	if err := json.Unmarshal([]byte(stderr), &body); err != nil || code != api.ExitNoTPM || body.Error.ExitCode != api.ExitNoTPM ||
		len(body.Error.Kinds) != 1 || body.Error.Kinds[0] != "no_tpm" {
		t.Fatalf("exit %d, stderr %q (%v)", code, stderr, err)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"unknown flag", []string{"--bogus"}, api.ExitUsage},
		{"bad output", []string{"-o", "yaml", "version"}, api.ExitUsage},
		{"extra args", []string{"version", "x"}, api.ExitUsage},
		{"no TPM", []string{"--tpm", "swtpm://127.0.0.1:1", "tpm", "info"}, api.ExitNoTPM},
		{"bad spec", []string{"--tpm", "tcp:foo", "tpm", "info"}, api.ExitError},
		{"version", []string{"version", "-o", "json"}, api.ExitOK},
		// Found by review: these exited 1 (or 0, extending nothing asked for).
		{"unknown command", []string{"nosuch"}, api.ExitUsage},
		{"unknown subcommand", []string{"key", "nosuch"}, api.ExitUsage},
		{"unknown nested subcommand", []string{"tpm", "pcr", "nosuch"}, api.ExitUsage},
		{"group alone prints help", []string{"key"}, api.ExitOK},
		{"PCR out of range", []string{"--tpm", "swtpm://127.0.0.1:1", "tpm", "pcr", "extend", "99", "--data", "x"}, api.ExitUsage},
		{"extend without data", []string{"--tpm", "swtpm://127.0.0.1:1", "tpm", "pcr", "extend", "16"}, api.ExitUsage},
		{"policy signer not PEM", []string{"--tpm", "swtpm://127.0.0.1:1", "provision", "--policy-signer", "cli_test.go"}, api.ExitUsage},
		{"officer key not PEM", []string{"--tpm", "swtpm://127.0.0.1:1", "provision", "--officer-key", "cli_test.go"}, api.ExitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, nil, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (%s)", code, tc.code, stderr)
			}
		})
	}
}

// provd man writes a page per command and provd-exit-codes(7), which names
// every exit code (make install puts them in man8 and man7).
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if _, stderr, code := run(t, nil, "man", dir); code != 0 {
		t.Fatalf("provd man: exit %d %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "provd.8")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "provd-exit-codes.7"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range api.ExitCodes() {
		if !strings.Contains(string(b), fmt.Sprintf(".B %d\n", c.Code)) {
			t.Errorf("provd-exit-codes.7 lacks exit code %d", c.Code)
		}
	}
}
