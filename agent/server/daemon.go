package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/tpm"
)

// Notifier tells the service manager about the daemon's life cycle. The
// systemd package's Notifier satisfies it; every method may fail, and a
// failure is logged, never fatal.
type Notifier interface {
	Ready() error
	Reloading() error
	Stopping() error
	Status(string) error
}

// DaemonConfig is what Run needs; cmd fills it from provd.yaml and flags and
// injects the systemd edge (Listen, Notifier, Watchdog).
type DaemonConfig struct {
	Config   Config
	StateDir string
	// Listen returns the API listener (socket activation or self-bound).
	Listen func(path string, mode os.FileMode, group string) (net.Listener, error)
	// Notifier receives READY, RELOADING, STOPPING and STATUS; nil: none.
	Notifier Notifier
	// Watchdog feeds the service manager's watchdog while healthy returns
	// nil and returns when ctx is done; nil: no watchdog.
	Watchdog func(ctx context.Context, healthy func() error) error
	// Reload delivers SIGHUP; Reconfig re-reads the configuration then.
	Reload   <-chan os.Signal
	Reconfig func() (Config, error)
	// LogLevel is the logger's level, set from the configuration.
	LogLevel *slog.LevelVar
	Logger   *slog.Logger
	ExitCode func(error) int
	// DrainTimeout bounds the wait for in-flight requests at stop
	// (default 50 s, under provd.service's TimeoutStopSec=60).
	DrainTimeout time.Duration
	// CloseTimeout bounds the further wait, after a drain that timed out,
	// for the operation still running in the TPM queue (default 5 s; with
	// DrainTimeout, under TimeoutStopSec). Past it the agent and the TPM are
	// left open for the process exit to close.
	CloseTimeout time.Duration
	// Ready, when set, is called once the daemon serves (tests).
	Ready func(*Server)
}

// Run is `provd serve`: it opens the TPM (start-up and self-test), the
// state and the listener, says READY=1, serves until ctx ends (SIGTERM) or a
// task fails, then drains: STOPPING=1, in-flight requests finish (within
// DrainTimeout), the operation still in the TPM queue if the drain timed out
// ends (within CloseTimeout; past it the agent and the TPM are left open and
// Run fails), the agent closes, leftover transient handles are flushed,
// TPM2_Shutdown(STATE) is sent and the TPM closed. A stop by ctx is a clean
// exit (nil).
func Run(ctx context.Context, dc DaemonConfig) (err error) {
	log := dc.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := dc.Notifier
	if n == nil {
		n = noNotifier{}
	}
	status := func(s string) {
		if err := n.Status(s); err != nil {
			log.Warn("sd_notify STATUS", "err", err)
		}
	}
	if dc.DrainTimeout <= 0 {
		dc.DrainTimeout = 50 * time.Second
	}
	if dc.CloseTimeout <= 0 {
		dc.CloseTimeout = 5 * time.Second
	}
	// abandoned: an operation still held the TPM queue at close; the agent
	// and the TPM stay as they are (see the deferred close of the queue).
	abandoned := false
	cfg := dc.Config
	if dc.LogLevel != nil {
		dc.LogLevel.Set(cfg.LogLevel)
	}

	status("opening the TPM")
	// The full self-test once, at start (one-shot commands ask the result
	// only: tpm.Options.FullSelfTest).
	t, err := tpm.Open(ctx, tpm.Options{Spec: cfg.TPM, StateDir: dc.StateDir, Logger: log, FullSelfTest: true})
	if err != nil {
		status("failed: " + err.Error())
		return err
	}
	log.Info("TPM open, self-test passed", "tpm", t.Spec())
	defer func() {
		if abandoned {
			return
		}
		if cerr := closeTPM(t, log); cerr != nil && err == nil {
			err = cerr
		}
	}()
	ag, err := agent.New(agent.Config{TPM: t, StateDir: dc.StateDir, Logger: log, UID: os.Getuid(), KeepSession: true})
	if err != nil {
		status("failed: " + err.Error())
		return err
	}
	defer func() {
		if abandoned {
			return
		}
		if cerr := ag.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	status("binding the API socket")
	ln, err := dc.Listen(cfg.Socket.Path, cfg.Socket.Mode, cfg.Socket.Group)
	if err != nil {
		status("failed: " + err.Error())
		return err
	}
	srv, err := New(Options{Agent: ag, TPM: t, Roles: cfg.Roles, RequestTimeout: cfg.RequestTimeout,
		MaxWaiting: cfg.MaxWaiting, EKCA: cfg.EKCA, ExitCode: dc.ExitCode, Logger: log})
	if err != nil {
		ln.Close()
		return err
	}
	// Runs before the agent and the TPM close. A drain that timed out leaves
	// an admitted operation in the queue, using the agent's key cache and TPM
	// handles: closing under it would flush its handles and send
	// TPM2_Shutdown mid-operation. Wait for it, then hold the queue for good;
	// if it does not end in time, leave the agent and the TPM alone.
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), dc.CloseTimeout)
		defer cancel()
		// Refusals counted and not yet written go into the trail holding
		// the closed queue's slot, after the last operation, whatever
		// waited for its turn (reviews 55, 56).
		lastCount := func() {
			if err := srv.recordRefusalCount(cctx); err != nil {
				log.Error("refusal count not audited at the stop", "err", err, "refusals", srv.uncounted.take().String())
			}
		}
		qerr := srv.q.close(cctx, lastCount)
		if qerr == nil {
			srv.journalUncounted() // counted between the last count and the queue's end
		}
		if qerr != nil {
			if c := srv.uncounted.take(); len(c) > 0 {
				log.Error("refusal count not audited at the stop: an operation still held the TPM", "refusals", c.String())
			}
			abandoned = true
			attrs := []any{"waited", dc.CloseTimeout}
			if since, held := srv.q.heldSince(); held {
				attrs = append(attrs, "held_for", time.Since(since).Round(time.Millisecond))
			}
			log.Error("an operation still holds the TPM after the drain: the agent and the TPM are left open, "+
				"no TPM2_Shutdown(STATE) is sent; the process exit closes them", attrs...)
			status("stopping: an operation still holds the TPM; not shutting it down")
			err = errors.Join(err, fmt.Errorf("stop: an operation still held the TPM queue %v after the drain; the TPM was not shut down", dc.CloseTimeout))
		}
	}()

	g := newGroup(ctx, log)
	g.Go("serve", func(context.Context) error { return srv.Serve(ln) })
	g.Go("drain", func(ctx context.Context) error {
		<-ctx.Done()
		if err := n.Stopping(); err != nil {
			log.Warn("sd_notify STOPPING", "err", err)
		}
		status("draining: finishing in-flight requests")
		log.Info("stopping: draining in-flight requests")
		dctx, cancel := context.WithTimeout(context.Background(), dc.DrainTimeout)
		defer cancel()
		if err := srv.Shutdown(dctx); err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		return nil
	})
	if dc.Watchdog != nil {
		g.Go("watchdog", func(ctx context.Context) error {
			healthy := func() error {
				err := srv.Health(ctx)
				if err != nil && ctx.Err() == nil {
					log.Warn("watchdog: the TPM does not answer, or an operation holds the queue without progress; not pinging", "err", err)
				}
				return err
			}
			if err := dc.Watchdog(ctx, healthy); err != nil {
				log.Warn("watchdog off", "err", err)
			}
			return nil
		})
	}
	if !t.Exclusive() {
		g.Go("rest", func(ctx context.Context) error {
			srv.restWhenIdle(ctx)
			return nil
		})
	}
	g.Go("reload", func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-dc.Reload:
				reload(srv, dc, n, log, status)
			}
		}
	})

	if err := n.Ready(); err != nil {
		log.Warn("sd_notify READY", "err", err)
	}
	ready := fmt.Sprintf("serving on %s, TPM %s", ln.Addr(), t.Spec())
	status(ready)
	log.Info("ready", "socket", ln.Addr().String(), "tpm", t.Spec())
	if dc.Ready != nil {
		dc.Ready(srv)
	}

	err = g.Wait()
	st := srv.Stats()
	log.Info("stopped serving", "requests", st.Requests, "refused", st.Refused, "tpm_commands", st.TPMCommands)
	status("stopping: closing the TPM")
	return err
}

// reload re-reads the configuration (SIGHUP) between RELOADING=1 and
// READY=1. A file that does not validate leaves the running configuration
// in place; the TPM and the socket are not reopened.
func reload(srv *Server, dc DaemonConfig, n Notifier, log *slog.Logger, status func(string)) {
	if err := n.Reloading(); err != nil {
		log.Warn("sd_notify RELOADING", "err", err)
	}
	status("reloading the configuration")
	defer func() {
		if err := n.Ready(); err != nil {
			log.Warn("sd_notify READY", "err", err)
		}
	}()
	if dc.Reconfig == nil {
		status("serving (nothing to reload)")
		return
	}
	cfg, err := dc.Reconfig()
	if err != nil {
		log.Error("reload failed; the previous configuration stays", "err", err)
		status("serving; reload failed: " + err.Error())
		return
	}
	if cfg.TPM != dc.Config.TPM || cfg.Socket != dc.Config.Socket {
		log.Warn("tpm and socket settings take effect at the next start")
	}
	srv.Reconfigure(cfg.Roles, cfg.RequestTimeout, cfg.EKCA)
	if dc.LogLevel != nil {
		dc.LogLevel.Set(cfg.LogLevel)
	}
	log.Info("configuration reloaded")
	status("serving; configuration reloaded")
}

// closeTPM ends the daemon's use of the TPM cleanly: transient handles an
// operation left (a bug, logged as one) are flushed, TPM2_Shutdown(STATE) is
// sent, and the connection closed (a sim TPM sends its own Shutdown(STATE)
// at Close before its process stops).
func closeTPM(t *tpm.TPM, log *slog.Logger) error {
	var errs []error
	left, err := t.Leftovers()
	errs = append(errs, err)
	if len(left) > 0 {
		log.Error("transient handles left in the TPM at stop; flushing", "count", len(left))
		for _, h := range left {
			errs = append(errs, t.Flush(h))
		}
	}
	if t.Spec() != "sim" {
		errs = append(errs, t.Shutdown(true))
	}
	errs = append(errs, t.Close())
	if err := errors.Join(errs...); err != nil {
		log.Error("closing the TPM", "err", err)
		return err
	}
	log.Info("TPM shut down (STATE) and closed")
	return nil
}

type noNotifier struct{}

func (noNotifier) Ready() error        { return nil }
func (noNotifier) Reloading() error    { return nil }
func (noNotifier) Stopping() error     { return nil }
func (noNotifier) Status(string) error { return nil }

// group runs the daemon's tasks: the first error cancels the others, a
// panic is recovered as an error, and context.Canceled is a clean end.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

func newGroup(ctx context.Context, log *slog.Logger) *group {
	ctx, cancel := context.WithCancel(ctx)
	return &group{ctx: ctx, cancel: cancel, log: log}
}

func (g *group) Go(name string, fn func(context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					g.log.Error("task panicked", "task", name, "panic", p, "stack", string(debug.Stack()))
					err = fmt.Errorf("task %s panicked: %v", name, p)
				}
			}()
			return fn(g.ctx)
		}()
		if err != nil && !errors.Is(err, context.Canceled) {
			g.once.Do(func() {
				g.err = fmt.Errorf("%s: %w", name, err)
				g.log.Error("task failed; stopping", "task", name, "err", err)
			})
			g.cancel()
		}
	}()
}

// Wait waits for every task and returns the first error.
func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
