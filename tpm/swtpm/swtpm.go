// Package swtpm manufactures and runs software TPMs (swtpm) for provd's "sim"
// transport and for the test harness. It is the one place that knows swtpm's
// command line, so the CLI's `--tpm sim` and every test start a TPM the same way.
//
// What we measured (see TPM-NOTES): swtpm's TCP command port takes raw TPM
// commands, its control port speaks swtpm's own protocol; with --daemon swtpm
// changes to /, so every path given to it is absolute; it serves one connection at
// a time. We run swtpm as a child (never --daemon) so that it can be stopped by pid.
package swtpm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotInstalled says that the swtpm binaries are missing. It is never a reason to
// skip a test: the Makefile installs them.
var ErrNotInstalled = errors.New("swtpm is not installed (Debian packages: swtpm swtpm-tools)")

// permall is the file swtpm keeps a TPM 2.0's permanent state in.
const permall = "tpm2-00.permall"

// Manufacture creates a TPM 2.0 state in stateDir with swtpm_setup, the way a TPM
// vendor would: RSA-2048 and ECC P-384 endorsement keys with certificates issued
// by a local CA kept in caDir, a platform certificate and only the sha256 PCR bank.
// No storage primary key: swtpm_setup's ECC SPK is P-384 with a SHA-384 name, not
// the TCG ECC P-256 SRK template, so provd creates the SRK itself (tpm.SRK). It does nothing when stateDir already
// holds a state. The CA is created on first use; its configuration lives in caDir,
// never in /etc or /var/lib, so tests and `--tpm sim` need no root.
func Manufacture(ctx context.Context, stateDir, caDir string) error {
	var err error
	if stateDir, err = filepath.Abs(stateDir); err != nil {
		return err
	}
	if caDir, err = filepath.Abs(caDir); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(stateDir, permall)); err == nil {
		return nil
	}
	setup, err := exec.LookPath("swtpm_setup")
	if err != nil {
		return ErrNotInstalled
	}
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		return ErrNotInstalled
	}
	if _, err := exec.LookPath("swtpm"); err != nil {
		return ErrNotInstalled
	}
	for _, d := range []string{stateDir, caDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	files := map[string]string{
		"localca.conf":    fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir),
		"localca.options": "--platform-manufacturer provd\n--platform-version 2.0\n--platform-model swtpm\n",
		"swtpm_setup.conf": fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s/localca.conf\ncreate_certs_tool_options = %s/localca.options\nactive_pcr_banks = sha256\n",
			localca, caDir, caDir),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(caDir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, setup, "--tpm2", "--tpmstate", stateDir,
		"--create-ek-cert", "--create-platform-cert",
		"--config", filepath.Join(caDir, "swtpm_setup.conf"), "--overwrite")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup: %w: %s", err, lastLines(out, 5))
	}
	return nil
}

// CABundle returns the PEM files of the local CA that signed the EK certificates
// of a TPM manufactured with caDir: the root first, then the issuing CA.
func CABundle(caDir string) []string {
	return []string{
		filepath.Join(caDir, "swtpm-localca-rootca-cert.pem"),
		filepath.Join(caDir, "issuercert.pem"),
	}
}

// Process is a running swtpm.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	// Addr is the TPM command channel: a loopback host:port, or a unix
	// socket path (StartUnix).
	Addr string
	// CtrlAddr is swtpm's control channel, likewise.
	CtrlAddr string
	// Pid is the process id of swtpm.
	Pid int
}

// Start runs swtpm on a manufactured state in stateDir, serving TPM commands on a
// free loopback port. It does not send TPM2_Startup: the caller decides between
// resuming (STATE) and a reset (CLEAR). It returns once the port accepts
// connections.
func Start(ctx context.Context, stateDir string) (*Process, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, ErrNotInstalled
	}
	var lastErr error
	// A free port can be taken by someone else between our probe and swtpm's
	// bind; try a few.
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePortPair()
		if err != nil {
			return nil, err
		}
		p, err := start(ctx, bin, stateDir, port)
		if err == nil {
			return p, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// StartOn runs swtpm on stateDir serving TPM commands on addr, a loopback
// host:port a Process had (its control channel on the next port), as the
// same TPM coming back on the same address after a power cut. It does not
// send TPM2_Startup.
func StartOn(ctx context.Context, stateDir, addr string) (*Process, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, ErrNotInstalled
	}
	_, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return nil, err
	}
	return start(ctx, bin, stateDir, port)
}

// StartUnix runs swtpm on stateDir serving TPM commands on the unix socket
// sock (swtpm --server type=unixio), its control channel on sock+".ctrl".
func StartUnix(ctx context.Context, stateDir, sock string) (*Process, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	if sock, err = filepath.Abs(sock); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, ErrNotInstalled
	}
	p, err := run(ctx, bin, stateDir,
		"type=unixio,path="+sock, "type=unixio,path="+sock+".ctrl", "unix", sock+".ctrl")
	if err != nil {
		return nil, err
	}
	p.Addr = sock
	return p, nil
}

func start(ctx context.Context, bin, stateDir string, port int) (*Process, error) {
	p, err := run(ctx, bin, stateDir,
		fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
	if err != nil {
		return nil, err
	}
	p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return p, nil
}

// run starts swtpm with the given --server and --ctrl specifications and waits
// until the control channel (ctrlNet, ctrlAddr) accepts connections: a probe of
// the command channel would take the one connection swtpm serves at a time.
func run(ctx context.Context, bin, stateDir, server, ctrl, ctrlNet, ctrlAddr string) (*Process, error) {
	var stderr strings.Builder
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--server", server,
		"--ctrl", ctrl,
		"--flags", "not-need-init")
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	// Its own process group: a Ctrl-C on provd's terminal must not kill the TPM
	// before provd has shut it down cleanly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), CtrlAddr: ctrlAddr, Pid: cmd.Process.Pid}
	go func() { _ = cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("swtpm exited at start: %s", lastLines([]byte(stderr.String()), 3))
		case <-ctx.Done():
			_ = p.Stop()
			return nil, ctx.Err()
		default:
		}
		c, err := net.DialTimeout(ctrlNet, ctrlAddr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			// The control port answering is not proof that this swtpm
			// runs: between the free-port probe and the bind another
			// process may have taken the ports (then ours exits at once,
			// and the answer was someone else's). Give it a moment to die.
			select {
			case <-p.done:
				return nil, fmt.Errorf("swtpm exited at start: %s", lastLines([]byte(stderr.String()), 3))
			case <-time.After(50 * time.Millisecond):
			}
			return p, nil
		}
		if time.Now().After(deadline) {
			_ = p.Stop()
			return nil, fmt.Errorf("swtpm did not listen on %s within 10s", p.CtrlAddr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop ends swtpm: SIGTERM, then SIGKILL after two seconds. swtpm writes its
// permanent state as it goes, so nothing is lost; volatile state (PCRs, loaded
// objects) survives only if the caller sent TPM2_Shutdown(STATE) first.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(2 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// Kill ends swtpm with SIGKILL at once, as a power cut would.
func (p *Process) Kill() error {
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// freePortPair finds two consecutive free loopback ports (command, control),
// below the kernel's ephemeral range where it can: the kernel hands a port
// of that range to the local end of any connection (a dial to another
// swtpm, a database client), so a swtpm killed and started again on its
// own port (swtpmtest's power cuts and migrations) found it taken by
// another test's connection (make test, once: "Address already in use"
// for the two seconds it waits). Below that range only a bind takes a
// port. Failing that, a port the kernel picks.
func freePortPair() (int, error) {
	lo, hi := 10000, ephemeralLow()-2
	for i := 0; i < 50 && hi > lo; i++ {
		port := lo + rand.IntN(hi-lo)
		if bothFree(port) {
			return port, nil
		}
	}
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if bothFree(port) {
			return port, nil
		}
	}
	return 0, errors.New("no two consecutive free loopback ports")
}

// bothFree: port and port+1 can be bound on the loopback now.
func bothFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	defer l.Close()
	l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+1)))
	if err != nil {
		return false
	}
	return l2.Close() == nil
}

// ephemeralLow is the first port of the kernel's ephemeral range
// (net.ipv4.ip_local_port_range; 32768 when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 0 {
		return 32768
	}
	return n
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
