// Package tpm is the only package of provd that sends TPM commands. It owns the
// transports (device, swtpm, sim), TPM start-up and self-test, the SRK, sessions,
// object and NV helpers, and the typed errors every TPM failure becomes. It imports
// go-tpm and nothing of provd's, so that every other package reaches the TPM
// through it and can be tested against the same seam (transport.TPM).
package tpm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/provd/provd/tpm/swtpm"
)

// Retry schedule for TPM warnings: the first delay, doubled at each retry.
const (
	retryBackoff = 20 * time.Millisecond
	maxRetries   = 8
)

// Device paths tried, in order, when no TPM is named. The resource manager
// (/dev/tpmrm0) comes first: it virtualizes the 3 object slots and flushes what a
// crashed client left behind.
var defaultDevices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// Options says which TPM to open and how. The zero value opens the first TPM
// device found.
type Options struct {
	// Spec names the TPM:
	//   /dev/tpmrm0, /dev/tpm0    a character device
	//   swtpm://HOST:PORT         swtpm's TCP command port (raw TPM commands)
	//   unix:///PATH              swtpm --server type=unixio
	//   sim                       a swtpm child that provd runs itself, with its
	//                             state in <StateDir>/swtpm, stopped at Close
	//   ""                        /dev/tpmrm0, else /dev/tpm0
	Spec string
	// StateDir holds the sim's TPM state (required for "sim").
	StateDir string
	// Timeout bounds one TPM command. Hardware TPMs take seconds to make an
	// RSA key; the default is two minutes.
	Timeout time.Duration
	// Logger receives debug lines (never secrets); nil discards.
	Logger *slog.Logger
	// Wrap, when set, wraps the raw channel below provd's counting and retry
	// layer. Tests use it to record or split the bytes on the wire.
	Wrap func(transport.TPM) transport.TPM
	// ResourceManager says the channel is a resource manager's, as
	// /dev/tpmrm0 always is: each client has its space, whose handles the
	// manager flushes itself, so provd is not the TPM's only client
	// (Exclusive false: no stale handle flushed at open, no sweep, and a
	// stale handle flushed by its number, TPM.ForgetsStale). Tests use it
	// with swtpm behind swtpmtest.SessionLimit.
	ResourceManager bool
	// OpenDevice opens a device Spec (a path) in place of the kernel's
	// device file; nil: linuxtpm.Open. Tests give a stand-in
	// (swtpmtest.DeviceStandIn).
	OpenDevice func(path string) (transport.TPMCloser, error)
	// RetrySleep waits before a command is resent after a TPM warning
	// (RETRY, YIELDED, TESTING, NV_RATE); it is given 20ms, doubled at each
	// retry, up to 8 retries. nil is time.Sleep. Tests inject one that
	// records the delays instead of waiting them out.
	RetrySleep func(time.Duration)
	// FullSelfTest runs TPM2_SelfTest(fullTest=YES) at open, as the daemon
	// does once at start and provd tpm selftest does on demand. Otherwise
	// an open asks TPM2_GetTestResult only, and runs TPM2_SelfTest(NO) (the
	// algorithms not yet tested) when the TPM says a test is needed: the
	// TPM tests itself at power-on and each algorithm before its first use
	// (TPM 2.0 Part 1, "Self-test"), and a full test costs a one-shot
	// command most of its time (23-33 ms on swtpm, about a second on some
	// chips: issue 14). docs/threat-model.md, "Self-tests".
	FullSelfTest bool
}

// TPM is an open TPM. It implements go-tpm's transport.TPM, so go-tpm commands
// execute on it directly; all commands go through one queue, one in flight.
type TPM struct {
	*counting
	spec      string
	closer    func() error
	sim       *swtpm.Process
	log       *slog.Logger
	closeOnce sync.Once // Close's work, once: a second Close waits for it
	closeErr  error

	staleFlushed int

	srkMu sync.Mutex
	srk   *Object // verified SRK, cached
	// pinned is the SRK established at first contact (PinSRK), or nil.
	pinned *Object
	// srkEvicted: EvictSRK removed the SRK (zeroize --srk); sessions are no
	// longer salted to the pin, whose key is gone, rather than recreate it.
	srkEvicted bool
	// srkTransientOnly: where 0x81000001 is empty, SRK makes a transient
	// copy of the SRK and never persists it (TransientSRKOnly); only
	// PersistSRK does.
	srkTransientOnly bool
	// srkPersistNow: within an operation that uses what lives under the
	// SRK in a provisioned state (PersistMissingSRK), a missing SRK is
	// persisted, TransientSRKOnly or not.
	srkPersistNow bool
	// srkPersistedNow: while srkPersistNow held, the empty 0x81000001 had
	// the SRK persisted (PersistMissingSRK(false) reports and clears it).
	srkPersistedNow bool
	// srkTransient is the handle of t.srk while it is such a copy (0
	// otherwise), made in TPM generation srkGen. Flush forgets it (an
	// atomic: Flush runs under srkMu too).
	srkTransient atomic.Uint32
	srkGen       uint64
	// powerCycled: PowerCycle asked that the sim stop without
	// Shutdown(STATE), so its next start is a reboot.
	powerCycled bool
	// rm: the channel is a resource manager's (Options.ResourceManager).
	rm bool
	// share is the operation's shared audit session (Share), nil outside
	// one.
	share *shared
	// keepShare: a Share's session is kept for the next Share (KeepShared,
	// the daemon's); kept holds it between them.
	keepShare bool
	kept      *shared
}

var _ transport.TPM = (*TPM)(nil)

// Open opens the TPM that opts names, starts it up if nobody has, runs the
// power-on self-test and refuses a TPM in failure mode.
func Open(ctx context.Context, opts Options) (*TPM, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	raw, closer, sim, spec, err := dial(ctx, opts, timeout)
	if err != nil {
		return nil, err
	}
	return build(opts, log, raw, closer, sim, spec)
}

// build is Open once the channel is dialed: the TPM around raw, started
// up, self-tested, and with what a dead client left flushed.
func build(opts Options, log *slog.Logger, raw transport.TPM, closer func() error, sim *swtpm.Process, spec string) (*TPM, error) {
	stream := raw
	if opts.Wrap != nil {
		raw = opts.Wrap(raw)
	}
	sleep := opts.RetrySleep
	if sleep == nil {
		sleep = time.Sleep
	}
	t := &TPM{
		counting: &counting{next: raw, backoff: retryBackoff, maxRetries: maxRetries, sleep: sleep},
		spec:     spec,
		closer:   closer,
		sim:      sim,
		log:      log,
		rm:       opts.ResourceManager,
	}
	if st, ok := stream.(*streamTransport); ok {
		st.onLost = func() { t.counting.generation.Add(1) }
		t.counting.probe = st.probe
	}
	if d, ok := stream.(*deviceTransport); ok {
		d.onLost = func() { t.counting.reopened(!t.Exclusive()) }
	}
	if err := t.startup(sim != nil, opts.FullSelfTest); err != nil {
		_ = t.Close()
		return nil, err
	}
	if t.Exclusive() {
		if err := t.flushStale(); err != nil {
			_ = t.Close()
			return nil, err
		}
	}
	log.Debug("TPM open", "spec", spec)
	return t, nil
}

func dial(ctx context.Context, opts Options, timeout time.Duration) (transport.TPM, func() error, *swtpm.Process, string, error) {
	spec := opts.Spec
	switch {
	case spec == "":
		for _, dev := range defaultDevices {
			if _, err := os.Stat(dev); err == nil {
				return openDevice(dev, opts.OpenDevice)
			}
		}
		return nil, nil, nil, "", fmt.Errorf("%w: none of %s exists; name one with --tpm (a device, swtpm://HOST:PORT, unix:///PATH or sim)",
			ErrNoTPM, strings.Join(defaultDevices, ", "))
	case spec == "sim":
		if opts.StateDir == "" {
			return nil, nil, nil, "", errors.New("tpm sim: a state directory is required")
		}
		dir, err := filepath.Abs(filepath.Join(opts.StateDir, "swtpm"))
		if err != nil {
			return nil, nil, nil, "", err
		}
		if err := swtpm.Manufacture(ctx, filepath.Join(dir, "state"), filepath.Join(dir, "ca")); err != nil {
			return nil, nil, nil, "", fmt.Errorf("%w: %v", ErrNoTPM, err)
		}
		p, err := swtpm.Start(ctx, filepath.Join(dir, "state"))
		if err != nil {
			return nil, nil, nil, "", fmt.Errorf("%w: %v", ErrNoTPM, err)
		}
		c, err := dialStream(ctx, "tcp", p.Addr, timeout)
		if err != nil {
			_ = p.Stop()
			return nil, nil, nil, "", err
		}
		return c, c.Close, p, spec, nil
	case strings.HasPrefix(spec, "swtpm://"):
		addr := strings.TrimPrefix(spec, "swtpm://")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, nil, nil, "", fmt.Errorf("tpm %q: want swtpm://HOST:PORT", spec)
		}
		c, err := dialStream(ctx, "tcp", addr, timeout)
		if err != nil {
			return nil, nil, nil, "", err
		}
		return c, c.Close, nil, spec, nil
	case strings.HasPrefix(spec, "unix://"):
		c, err := dialStream(ctx, "unix", strings.TrimPrefix(spec, "unix://"), timeout)
		if err != nil {
			return nil, nil, nil, "", err
		}
		return c, c.Close, nil, spec, nil
	case strings.HasPrefix(spec, "/"):
		return openDevice(spec, opts.OpenDevice)
	default:
		return nil, nil, nil, "", fmt.Errorf("tpm %q: want a device path, swtpm://HOST:PORT, unix:///PATH or sim", spec)
	}
}

func openDevice(path string, open func(string) (transport.TPMCloser, error)) (transport.TPM, func() error, *swtpm.Process, string, error) {
	if open == nil {
		open = linuxtpm.Open
	}
	d := &deviceTransport{path: path, open: open}
	dev, err := d.open(path)
	if err != nil {
		return nil, nil, nil, "", fmt.Errorf("%w: %v", ErrNoTPM, err)
	}
	d.dev = dev
	return d, d.Close, nil, path, nil
}

func dialStream(ctx context.Context, network, addr string, timeout time.Duration) (*streamTransport, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		if ctx.Err() != nil {
			// Interrupted (SIGINT, SIGTERM), not a missing TPM (found by
			// the exit-code walk: a canceled open exited 6).
			return nil, fmt.Errorf("dial the TPM: %w", ctx.Err())
		}
		return nil, fmt.Errorf("%w: %v", ErrNoTPM, err)
	}
	// A reconnect outlives the context of the open (a daemon's TPM lives
	// for the daemon's life).
	redial := func() (net.Conn, error) { return d.Dial(network, addr) }
	return &streamTransport{conn: conn, redial: redial, timeout: timeout}, nil
}

// Exclusive reports whether provd is the TPM's only client on this
// connection (exclusive): any transient handle it does not hold itself was
// left by a client that died, or leaked, and may be flushed.
func (t *TPM) Exclusive() bool { return !t.rm && exclusive(t.spec) }

// ForgetsStale reports whether a handle made in generation gen is to be
// forgotten rather than flushed by its number: the generation moved since
// (a reset, a power cut, a lost connection, a migration), and the TPM is
// provd's alone, where that number may now be another session's slot
// (the TPM flushes by slot) and the sweep (Unheld, the owner's
// Leftovers) flushes whatever is left by what the TPM lists. Behind a
// resource manager there is no sweep; a number is the connection's own,
// and the manager drops them at a reset: it is flushed as before (found
// by review: forgotten there, two forged answers leaked a session each
// until the connection's three were gone), unless the device was opened
// again since (ReopenedSince): the old space, and all it held, is gone.
func (t *TPM) ForgetsStale(gen uint64) bool {
	return gen != t.Generation() && (t.Exclusive() || t.ReopenedSince(gen))
}

// ReopenedSince reports whether a resource manager's device was opened
// again (its space lost, deviceTransport) after generation gen: whatever
// was made in gen went with the old space, and its number, which the
// manager does not virtualize for sessions, may be another connection's.
// On /dev/tpmN a new open loses nothing: the generation moves, and what
// provd made is flushed by its number or swept, as after a lost channel
// (found by review 14: skipped there, a session stayed loaded, held by
// nobody).
func (t *TPM) ReopenedSince(gen uint64) bool {
	if t.Exclusive() {
		return false // /dev/tpmN: what provd made is still in the TPM, provd's alone
	}
	r := t.counting.lastReopen.Load()
	return r != 0 && gen < r
}

// exclusive reports whether provd is the TPM's only client on this transport:
// swtpm serves one connection at a time and /dev/tpm0 opens once, so anything
// loaded there was left by a client that died. /dev/tpmrm0 virtualizes handles
// per connection and flushes them itself, as every /dev/tpmrmN does (a
// second TPM's is /dev/tpmrm1). Taken for exclusive, a manager's channel
// would have provd treat every handle it does not hold as a leak to flush,
// where session handles are not virtualized and may be other clients'.
func exclusive(spec string) bool {
	n, ok := strings.CutPrefix(filepath.Clean(spec), "/dev/tpmrm")
	if !ok || n == "" {
		return true
	}
	for _, c := range n {
		if c < '0' || c > '9' {
			return true
		}
	}
	return false
}

// flushStale flushes the transient objects and sessions a dead client left in a
// TPM without a resource manager; with 3 slots, a single crash would otherwise
// make every later command fail with TPM_RC_OBJECT_MEMORY.
func (t *TPM) flushStale() error {
	left, err := t.openLeftovers()
	if err != nil {
		return err
	}
	for _, h := range left {
		if err := t.Flush(h); err != nil {
			return err
		}
	}
	if len(left) > 0 {
		t.log.Info("flushed handles a previous client left in the TPM", "count", len(left))
	}
	t.staleFlushed = len(left)
	return nil
}

// Unheld notes that a handle provd loaded may be left in the TPM with
// nobody holding it (a cache forgot it on the bus's word that it is gone):
// the owner's sweep (NeedsSweep) then flushes whatever it does not hold.
func (t *TPM) Unheld() { t.counting.unheld() }

// StaleFlushed is the number of leftover handles flushed at Open.
func (t *TPM) StaleFlushed() int { return t.staleFlushed }

// Spec returns the name of the TPM as it was opened.
func (t *TPM) Spec() string { return t.spec }

// Stats returns the counters of commands sent so far.
func (t *TPM) Stats() Stats { return t.counting.stats() }

// Close closes the channel. A sim TPM is shut down with TPM2_Shutdown(STATE) and
// stopped, so that its next start resumes with PCRs and saved contexts intact, as
// a machine that suspends and resumes.
func (t *TPM) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.close() })
	return t.closeErr
}

// close is Close's work.
func (t *TPM) close() error {
	var errs []error
	if err := t.DropTransientSRK(); err != nil {
		errs = append(errs, err)
	}
	if t.sim != nil && !t.powerCycled {
		if err := t.Shutdown(true); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, t.counting.close(t.closer))
	if t.sim != nil {
		errs = append(errs, t.sim.Stop())
	}
	return errors.Join(errs...)
}

// PowerCycle makes the next start of the sim TPM a reboot: Close stops it
// after TPM2_Shutdown(CLEAR) instead of STATE, so the next TPM2_Startup is
// CLEAR (PCRs at their reset values, sessions and saved contexts gone). Only
// for the sim; a real TPM reboots with its machine.
func (t *TPM) PowerCycle() error {
	if t.sim == nil {
		return fmt.Errorf("%w: only the sim TPM (--tpm sim) is power-cycled by provd; %s reboots with its machine", ErrUnsupported, t.spec)
	}
	if err := t.Shutdown(false); err != nil {
		return err
	}
	t.powerCycled = true
	return nil
}

// Shutdown sends TPM2_Shutdown: STATE (state true) keeps PCRs and saved contexts
// for the next TPM2_Startup(STATE); CLEAR does not. A daemon sends it when it stops:
// an unclean stop counts against the dictionary-attack lockout on some TPMs.
func (t *TPM) Shutdown(state bool) error {
	typ := tpm2.TPMSUClear
	if state {
		typ = tpm2.TPMSUState
	}
	if _, err := (tpm2.Shutdown{ShutdownType: typ}).Execute(t); err != nil {
		return Wrap("TPM2_Shutdown", err)
	}
	return nil
}

// startup brings the TPM to a tested state: the self-test (full, or the
// result and what the TPM says it needs: Options.FullSelfTest), and a
// refusal of a TPM in failure mode. A TPM nobody has started answers the
// first of these TPM_RC_INITIALIZE, and the channel (counting.Send) starts
// it with Startup(CLEAR) and sends the command again; a started TPM (every
// device: the kernel starts it) costs no Startup at all (issue 14: one
// command fewer on every open). resume tries Startup(STATE) first, for the
// sim, whose state was saved at its last stop.
func (t *TPM) startup(resume, full bool) error {
	if resume {
		_, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(t)
		if err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
			// No state to resume (a first start, or the state was
			// cleared): the first command below starts it afresh.
			t.log.Debug("TPM2_Startup(STATE) refused; starting with CLEAR", "err", err)
		}
	}
	var rc tpm2.TPMRC
	var err error
	if full {
		rc, err = t.SelfTest(true)
	} else if rc, err = t.TestResult(); err == nil && rc == tpm2.TPMRCNeedsTest {
		rc, err = t.SelfTest(false)
	}
	if err != nil {
		return err
	}
	// TESTING: the TPM is running its tests; a command that needs an
	// algorithm still under test is answered TESTING and retried.
	if rc != tpm2.TPMRCSuccess && rc != tpm2.TPMRCTesting {
		return fmt.Errorf("%w: self-test result 0x%x", ErrFailureMode, uint32(rc))
	}
	return nil
}
