// Package swtpmtest starts a fresh swtpm for a test and hands it an opened TPM.
// Every TPM test of provd starts its TPM here, so all of them get the same
// manufactured state (EK certificates from a local CA inside the test's temp
// dir), the same clean-up by pid, and the same check that no transient handle
// or session was left behind.
//
// It never skips: a machine without swtpm fails the test with a message that
// says which packages to install (`make test` installs them).
//
// With -provd.device=/dev/tpmrm0 the same suites run against a real TPM; tests
// that would disturb the platform (PCR extends, lockout, zeroize of the SRK)
// call RequireSimulator and are skipped there.
package swtpmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/tpm"
	"github.com/provd/provd/tpm/swtpm"
)

var (
	device = flag.String("provd.device", "", "run TPM tests against this TPM device instead of a fresh swtpm")
	seed   = flag.Uint64("provd.seed", 0, "seed of the tests that act at random moments (kill tests); 0 picks a fresh one")
)

// Seed returns the seed for a test that acts at random moments: -provd.seed
// when given, else a fresh random one. It logs the seed first, so that a
// failure can be replayed with -provd.seed=N.
func Seed(t testing.TB) uint64 {
	t.Helper()
	s := *seed
	for s == 0 {
		s = rand.Uint64()
	}
	t.Logf("seed %d (replay with -provd.seed=%d)", s, s)
	return s
}

// Env is one test's TPM.
type Env struct {
	// TPM is open, started up and self-tested.
	TPM *tpm.TPM
	// Spec is how to reach the TPM again (swtpm://127.0.0.1:PORT), e.g. for a
	// provd child process; only one connection at a time is served, so close
	// TPM first (CloseTPM).
	Spec string
	// StateDir is the swtpm's state directory; CADir its local CA.
	StateDir, CADir string
	// CABundle lists the PEM files of the CA that issued the EK certificates.
	CABundle []string
	// Pid of the swtpm process (0 on a real device).
	Pid int
	// Addr and CtrlAddr are swtpm's command and control channels (TCP;
	// empty on a real device or a unix socket), e.g. for test/tpmproxy.
	Addr, CtrlAddr string

	t    testing.TB
	proc *swtpm.Process
	opts options
}

type options struct {
	wrap      func(transport.TPM) transport.TPM
	noLeakChk bool
	unix      bool
	rm        bool
}

// Option changes how Start opens the TPM.
type Option func(*options)

// WithWrap wraps the raw channel (recorders, proxies). Wraps given
// together stack in order: the first is next to the TPM, the last next to
// provd (a recorder given last sees what provd sends and receives).
func WithWrap(w func(transport.TPM) transport.TPM) Option {
	return func(o *options) {
		inner := o.wrap
		if inner == nil {
			o.wrap = w
			return
		}
		o.wrap = func(next transport.TPM) transport.TPM { return w(inner(next)) }
	}
}

// WithUnixSocket serves the TPM on a unix socket (Spec unix:///PATH) instead
// of a loopback TCP port.
func WithUnixSocket() Option {
	return func(o *options) { o.unix = true }
}

// WithResourceManager opens the TPM as a resource manager's channel
// (tpm.Options.ResourceManager, as /dev/tpmrm0 is): provd then takes itself
// for one client among others. With SessionLimit, a stand-in for
// /dev/tpmrm0.
func WithResourceManager() Option {
	return func(o *options) { o.rm = true }
}

// Start manufactures and starts a swtpm for t, opens it, and registers clean-up:
// the handle-leak check, closing, and stopping swtpm by pid.
//
// Manufacturing (swtpm_setup with EK certificates from a local CA) costs
// about a second, most of a TPM test's time, so the first Env of a test
// starts from a copy of one manufactured state per test binary, written into
// the test's own temp dir: each test still gets its own swtpm process and
// state, and Envs of different tests share only their manufactured identity
// (seeds, EK and its certificate), which no test compares across tests. A
// second Env in the same test is manufactured afresh, so the TPMs one test
// talks to are always distinct TPMs (a peer, "another TPM").
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	e := &Env{t: t, opts: o}
	if *device != "" {
		e.Spec = *device
	} else {
		e.manufactureAndStart()
	}
	// One registration for both modes, after the temp dirs' own clean-ups so
	// that it runs before them: the leak check and Close matter on a real
	// device as much as on swtpm (on /dev/tpm0 a leaked handle stays for the
	// next test).
	t.Cleanup(e.cleanup)
	e.open()
	return e
}

func (e *Env) manufactureAndStart() {
	e.t.Helper()
	dir := swtpmDir(e.t)
	e.StateDir = filepath.Join(dir, "state")
	e.CADir = filepath.Join(dir, "ca")
	var err error
	if firstOf(e.t) {
		err = sharedTemplate.copyTo(e.t, e.StateDir, e.CADir)
	} else {
		err = manufacture(e.StateDir, e.CADir)
	}
	if err != nil {
		e.t.Fatalf("swtpm: %v (run `make test`, which installs swtpm and swtpm-tools)", err)
	}
	e.CABundle = swtpm.CABundle(e.CADir)
	e.startProcess()
}

func manufacture(stateDir, caDir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return swtpm.Manufacture(ctx, stateDir, caDir)
}

// started records the tests that have an Env already.
var started struct {
	sync.Mutex
	tests map[testing.TB]bool
}

// firstOf reports whether t starts its first Env, and remembers that it did.
func firstOf(t testing.TB) bool {
	started.Lock()
	defer started.Unlock()
	if started.tests[t] {
		return false
	}
	if started.tests == nil {
		started.tests = map[testing.TB]bool{}
	}
	started.tests[t] = true
	t.Cleanup(func() {
		started.Lock()
		defer started.Unlock()
		delete(started.tests, t)
	})
	return true
}

// template is one manufactured state and its CA, kept in memory (no file
// outlives the test that made it) and written out for each test.
type template struct {
	once      sync.Once
	err       error
	caDir     string            // where it was made: the CA's config names it
	state, ca map[string][]byte // file name -> contents
}

var sharedTemplate template

// swtpmDir is t's temp dir for a swtpm's state and CA, unless its path has
// a comma: swtpm's options separate their values with commas (--tpmstate
// dir=PATH,...), so a subtest named "a, b" broke every TPM test of the
// binary after it. Then a directory of the test's own under the system's
// temp dir, removed with the test.
func swtpmDir(t testing.TB) string {
	dir := t.TempDir()
	if !strings.Contains(dir, ",") {
		return dir
	}
	dir, err := os.MkdirTemp("", "provd-swtpmtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// copyTo writes the template into stateDir and caDir, manufacturing it in
// t's temp dir first if this is the binary's first Env.
func (tp *template) copyTo(t testing.TB, stateDir, caDir string) error {
	tp.once.Do(func() {
		dir := swtpmDir(t)
		tp.caDir = filepath.Join(dir, "ca")
		if tp.err = manufacture(filepath.Join(dir, "state"), tp.caDir); tp.err != nil {
			return
		}
		if tp.state, tp.err = readFiles(filepath.Join(dir, "state")); tp.err != nil {
			return
		}
		tp.ca, tp.err = readFiles(tp.caDir)
	})
	if tp.err != nil {
		return tp.err
	}
	if err := writeFiles(stateDir, tp.state, "", ""); err != nil {
		return err
	}
	// The CA's configuration names its own directory.
	return writeFiles(caDir, tp.ca, tp.caDir, caDir)
}

func readFiles(dir string) (map[string][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out[e.Name()] = b
	}
	return out, nil
}

func writeFiles(dir string, files map[string][]byte, from, to string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		if from != "" {
			b = bytes.ReplaceAll(b, []byte(from), []byte(to))
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (e *Env) startProcess() {
	e.t.Helper()
	var p *swtpm.Process
	var err error
	if e.opts.unix {
		// Unix socket paths are limited to 108 bytes: keep it short.
		dir, derr := os.MkdirTemp("", "provd-swtpm")
		if derr != nil {
			e.t.Fatal(derr)
		}
		e.t.Cleanup(func() { os.RemoveAll(dir) })
		p, err = swtpm.StartUnix(context.Background(), e.StateDir, filepath.Join(dir, "tpm.sock"))
	} else {
		p, err = swtpm.Start(context.Background(), e.StateDir)
	}
	if err != nil {
		e.t.Fatalf("start swtpm: %v", err)
	}
	e.proc = p
	e.Pid = p.Pid
	e.Spec = "swtpm://" + p.Addr
	if e.opts.unix {
		e.Spec = "unix://" + p.Addr
	} else {
		e.Addr, e.CtrlAddr = p.Addr, p.CtrlAddr
	}
}

func (e *Env) open() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t, err := tpm.Open(ctx, tpm.Options{Spec: e.Spec, Wrap: e.opts.wrap, Timeout: 30 * time.Second, ResourceManager: e.opts.rm})
	// A swtpm just started may accept its command port a moment after its
	// control port: a refused connection is retried for a short while.
	for wait := 10 * time.Millisecond; errors.Is(err, tpm.ErrNoTPM) && wait < time.Second; wait *= 2 {
		time.Sleep(wait)
		t, err = tpm.Open(ctx, tpm.Options{Spec: e.Spec, Wrap: e.opts.wrap, Timeout: 30 * time.Second, ResourceManager: e.opts.rm})
	}
	if err != nil {
		e.t.Fatalf("open %s: %v", e.Spec, err)
	}
	e.TPM = t
}

// CloseTPM closes the test's connection so that another client (a provd child
// process, tpm2-tools) can connect; swtpm serves one connection at a time.
// It checks for leaked handles first.
func (e *Env) CloseTPM() {
	e.t.Helper()
	if e.TPM == nil {
		return
	}
	e.checkLeaks()
	if err := e.TPM.Close(); err != nil {
		e.t.Errorf("close TPM: %v", err)
	}
	e.TPM = nil
}

// Reopen opens the TPM again after CloseTPM.
func (e *Env) Reopen() {
	e.t.Helper()
	if e.TPM != nil {
		e.CloseTPM()
	}
	e.open()
}

// Restart stops swtpm and starts it again on the same state, as a reboot: with
// state true the TPM is shut down with TPM2_Shutdown(STATE) first and resumed
// (PCRs and saved contexts survive); otherwise it is killed and started with
// Startup(CLEAR), as after a power cut.
func (e *Env) Restart(state bool) {
	e.t.Helper()
	e.RequireSimulator()
	if e.TPM != nil {
		if state {
			if err := e.TPM.Shutdown(true); err != nil {
				e.t.Fatalf("shutdown: %v", err)
			}
		}
		e.CloseTPM()
	}
	if err := e.proc.Stop(); err != nil {
		e.t.Fatalf("stop swtpm: %v", err)
	}
	e.startProcess()
	e.open()
}

// PowerCut kills swtpm under the open TPM connection and starts it again on
// the same address and state, without TPM2_Startup: a power cycle under a
// running provd, which must notice (its connection broke), dial again, and
// find a TPM that answers TPM_RC_INITIALIZE until someone starts it up.
// Transient objects and sessions are gone; persistent ones and NV stay.
func (e *Env) PowerCut() {
	e.t.Helper()
	e.RequireSimulator()
	e.restartOnSameAddress(e.proc.Kill)
}

// restartOnSameAddress ends swtpm with stop (Kill: a power cut; Stop:
// SIGTERM) and starts it again on the same address and state, without
// TPM2_Startup.
func (e *Env) restartOnSameAddress(stop func() error) {
	e.t.Helper()
	addr := e.proc.Addr
	if err := stop(); err != nil {
		e.t.Fatalf("stop swtpm: %v", err)
	}
	var p *swtpm.Process
	var err error
	if e.opts.unix {
		// The socket files a killed swtpm leaves stand in the way.
		_ = os.Remove(addr)
		_ = os.Remove(e.proc.CtrlAddr)
		p, err = swtpm.StartUnix(context.Background(), e.StateDir, addr)
	} else {
		// The port may still be held a moment after the kill (the
		// killed process's sockets), or taken by another test's swtpm
		// between the kill and this start (found by make reliability,
		// beside other tests: "Address already in use"): tried again for
		// up to two seconds.
		for try := 0; ; try++ {
			p, err = swtpm.StartOn(context.Background(), e.StateDir, addr)
			if err == nil || try == 20 || !strings.Contains(err.Error(), "Address already in use") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err != nil {
		e.t.Fatalf("start swtpm again on %s: %v", addr, err)
	}
	e.proc = p
}

// Migrate stops swtpm under the open connection and starts it again on the
// same address with its volatile state (swtpm_ioctl -v, then -i), as a
// hypervisor moving a VM's TPM does: the connection breaks, but the TPM is
// not reset, its loaded objects and sessions are where they were.
func (e *Env) Migrate() {
	e.t.Helper()
	e.RequireSimulator()
	e.ioctl("-v")
	e.restartOnSameAddress(e.proc.Kill)
	e.ioctl("-i")
}

// Hibernate is a graceful restart under a running provd, between its
// operations: TPM2_Shutdown(STATE) on the open connection (as the OS sends
// before hibernation), swtpm stopped (SIGTERM) and started again on the same
// address; with resume, firmware's TPM2_Startup(STATE) on a connection of
// its own, closed before provd dials again (PCRs and saved contexts come
// back), else none (provd meets TPM_RC_INITIALIZE and starts it up itself,
// with CLEAR).
func (e *Env) Hibernate(resume bool) {
	e.t.Helper()
	e.RequireSimulator()
	if err := e.TPM.Shutdown(true); err != nil {
		e.t.Fatalf("shutdown(STATE): %v", err)
	}
	e.restartOnSameAddress(e.proc.Stop)
	if !resume {
		return
	}
	network := "tcp"
	if e.opts.unix {
		network = "unix"
	}
	c, err := net.DialTimeout(network, e.proc.Addr, 10*time.Second)
	if err != nil {
		e.t.Fatalf("resume: %v", err)
	}
	defer c.Close()
	// TPM2_Startup(STATE): tag, size 12, TPM_CC_Startup, TPM_SU_STATE.
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 1}
	rsp := make([]byte, 10)
	if _, err := c.Write(cmd); err != nil {
		e.t.Fatalf("resume: %v", err)
	}
	if _, err := io.ReadFull(c, rsp); err != nil {
		e.t.Fatalf("resume: %v", err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		e.t.Fatalf("resume: TPM2_Startup(STATE) answered 0x%x", rc)
	}
}

// ioctl sends one swtpm_ioctl command on the control channel.
func (e *Env) ioctl(cmd string) {
	e.t.Helper()
	args := []string{cmd, "--tcp", e.proc.CtrlAddr}
	if e.opts.unix {
		args = []string{cmd, "--unix", e.proc.CtrlAddr}
	}
	if out, err := exec.Command("swtpm_ioctl", args...).CombinedOutput(); err != nil {
		e.t.Fatalf("swtpm_ioctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Reset resets the TPM under the open connection, as a platform reset the
// host survives would (swtpm's control channel: a hardware TPM_Init): the
// connection to the command channel stays up, so provd sees no I/O error,
// only a TPM that answers TPM_RC_INITIALIZE until someone starts it up, with
// every transient object and session gone and their handle numbers free to
// be handed out again.
func (e *Env) Reset() {
	e.t.Helper()
	e.RequireSimulator()
	e.ioctl("-i")
}

// Events are the TPM events Event makes, by name.
var Events = []string{"reset", "power cut", "migrate"}

// Event makes the TPM event name (one of Events): Reset, PowerCut or
// Migrate.
func (e *Env) Event(name string) {
	e.t.Helper()
	switch name {
	case "reset":
		e.Reset()
	case "power cut":
		e.PowerCut()
	case "migrate":
		e.Migrate()
	default:
		e.t.Fatalf("swtpmtest: no TPM event %q", name)
	}
}

// CAPEM is the EK CA bundle's PEM (every file of CABundle), as an operator
// passes it to --ek-ca or a fleet endpoint trusts it.
func (e *Env) CAPEM() []byte {
	e.t.Helper()
	var out []byte
	for _, f := range e.CABundle {
		b, err := os.ReadFile(f)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// RequireSimulator skips a test that would disturb a real TPM's platform state.
func (e *Env) RequireSimulator() {
	e.t.Helper()
	if e.proc == nil {
		e.t.Skip("disturbs the platform; runs on swtpm only")
	}
}

// NoLeakCheck turns the end-of-test handle check off, for tests that leave
// handles on purpose (fault injection); they must say why in a comment.
func (e *Env) NoLeakCheck() { e.opts.noLeakChk = true }

func (e *Env) checkLeaks() {
	e.t.Helper()
	if e.opts.noLeakChk || e.TPM == nil {
		return
	}
	left, err := e.TPM.Leftovers()
	if err != nil {
		e.t.Errorf("handle-leak check: %v", err)
		return
	}
	if len(left) > 0 {
		var s []string
		for _, h := range left {
			s = append(s, fmt.Sprintf("0x%08x", uint32(h)))
		}
		e.t.Errorf("test left handles in the TPM: %s", strings.Join(s, " "))
	}
}

func (e *Env) cleanup() {
	if e.TPM != nil {
		e.checkLeaks()
		_ = e.TPM.Close()
		e.TPM = nil
	}
	if e.proc != nil {
		_ = e.proc.Stop()
		// Make sure by pid: a test that forked must not leave a TPM behind.
		if p, err := os.FindProcess(e.Pid); err == nil {
			_ = p.Kill()
		}
	}
}
