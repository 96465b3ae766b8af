// Package cli is provd's command tree. It is thin on purpose: each command parses
// its flags, builds a validated request and calls one function of agent, attest
// or tpm, then prints the result as text or JSON. Exit codes travel as errors
// and are decided in one place (ExitCode).
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/provd/provd/api"
	"github.com/provd/provd/internal/trustedpath"
	"github.com/provd/provd/tpm"
)

// Deps are the process's connections to the world, injected so tests run the
// real command tree in-process.
type Deps struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Version        string
	// Server is what only provd-fleet links (handoff.go); nil in provd.
	Server Server
}

// DefaultStateDir is where provd keeps its state unless told otherwise.
const DefaultStateDir = "/var/lib/provd"

// DefaultSocket is the daemon's API socket (provd.socket).
const DefaultSocket = "/run/provd/provd.sock"

// app holds the global flags of one invocation.
type app struct {
	deps     Deps
	tpmSpec  string
	stateDir string
	socket   string
	output   string
	verbose  bool
	log      *slog.Logger
	args     []string // as Main got them, for handOff
}

// Run is a binary's main: the command tree on this process's arguments,
// standard streams and environment, until SIGINT or SIGTERM. srv is what
// the binary links beyond provd (provd-fleet: package fleetserver; nil in
// provd, which hands those commands to provd-fleet).
func Run(version string, srv Server) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Main(ctx, os.Args[1:], Deps{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Version: version, Server: srv})
}

// Main runs provd with args and returns the process exit code.
func Main(ctx context.Context, args []string, deps Deps) int {
	root, a := newRoot(deps)
	a.args = args
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return api.ExitOK
	}
	// Under -o json the error is JSON too, on stderr, in the daemon's form
	// (docs/api.md): {"error": {"message", "kinds", "exit_code", "policy"}}.
	if o, _ := root.PersistentFlags().GetString("output"); o == "json" {
		enc := json.NewEncoder(terminalSafe{deps.Stderr, true})
		enc.SetIndent("", "  ")
		if enc.Encode(api.NewErrorBody(err, ExitCode)) == nil {
			return ExitCode(err)
		}
	}
	// The message may carry what came from a file, a peer or the daemon's
	// socket: never a terminal's control characters raw (review 53).
	fmt.Fprintf(deps.Stderr, "provd: %s\n", printable(err.Error()))
	return ExitCode(err)
}

// newRoot builds the command tree.
func newRoot(deps Deps) (*cobra.Command, *app) {
	if deps.Getenv == nil {
		deps.Getenv = func(string) string { return "" }
	}
	if deps.Stdin == nil {
		deps.Stdin = os.Stdin
	}
	a := &app{deps: deps}
	root := &cobra.Command{
		Use:   "provd",
		Short: "TPM 2.0-backed provisioning agent",
		Long: `provd generates a provisioning key inside the TPM, seals it to the platform's
PCR measurements, derives operational keys from it inside the TPM, and serves them
to the device's software.

The TPM is named with --tpm (or $PROVD_TPM):
  /dev/tpmrm0, /dev/tpm0    a TPM device (default: the first that exists)
  swtpm://HOST:PORT         a swtpm's TCP command port
  unix:///PATH              a swtpm unix socket
  sim                       a swtpm that provd starts itself, state in <state-dir>/swtpm

Exit codes are listed in docs/exit-codes.md; 3 means the PCRs do not satisfy
the key's policy.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if a.output != "text" && a.output != "json" {
				return usageError(fmt.Errorf("-o %q: want text or json", a.output))
			}
			level := slog.LevelWarn
			if a.verbose {
				level = slog.LevelDebug
			}
			a.log = slog.New(slog.NewTextHandler(deps.Stderr, &slog.HandlerOptions{Level: level}))
			return nil
		},
	}
	root.SetOut(deps.Stdout)
	root.SetErr(deps.Stderr)
	root.SetIn(deps.Stdin)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })

	stateDefault := deps.Getenv("PROVD_STATE_DIR")
	if stateDefault == "" {
		stateDefault = DefaultStateDir
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.tpmSpec, "tpm", deps.Getenv("PROVD_TPM"), "TPM to use: device path, swtpm://HOST:PORT, unix:///PATH or sim (env PROVD_TPM)")
	pf.StringVar(&a.stateDir, "state-dir", stateDefault, "state directory (env PROVD_STATE_DIR)")
	socketDefault := deps.Getenv("PROVD_SOCKET")
	if socketDefault == "" {
		socketDefault = DefaultSocket
	}
	pf.StringVar(&a.socket, "socket", socketDefault, "the daemon's API socket, used when it answers and --tpm is not given (env PROVD_SOCKET)")
	pf.StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "debug logging and TPM command counts on stderr")

	root.AddCommand(
		a.versionCmd(),
		a.tpmCmd(),
		a.provisionCmd(),
		a.policyCmd(),
		a.sealCmd(),
		a.unsealCmd(),
		a.statusCmd(),
		a.auditCmd(),
		a.zeroizeCmd(),
		a.keyCmd(),
		a.kekCmd(),
		a.peerCmd(),
		a.dupCmd(),
		a.fwCmd(),
		a.attestCmd(),
		a.fleetCmd(),
		a.serveCmd(),
		a.manCmd(root),
	)
	groupsRefuseUnknown(root)
	return root, a
}

// groupsRefuseUnknown makes every command that only groups others (provd,
// provd key, provd tpm, …) print its help when called alone and refuse an
// unknown subcommand with a usage error (exit 2); cobra would print the help
// and exit 0, or exit 1.
func groupsRefuseUnknown(c *cobra.Command) {
	for _, sub := range c.Commands() {
		groupsRefuseUnknown(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError(fmt.Errorf("unknown command %q for %q (%s --help lists them)", args[0], cmd.CommandPath(), cmd.CommandPath()))
		}
		return cmd.Help()
	}
}

// resolvedStateDir is the state directory as the kernel resolves it, every
// link and ".." on the way checked (trustedpath.Walk): the directory the
// store and the agent use, so that every file of the state is found where
// they keep it (found by review 66: filepath.Abs made "lnk/../state"
// another directory, and pcr read, the firmware hook's files, attest and
// the fleet's files went there). While it does not exist, as it will be
// once made (trustedpath.Resolve: review 67, its text cleaned was another
// directory). A state the caller may not search is none of the caller's
// (review 67: `fw log --log FILE` by a user, which needs no state, failed
// on it): the path as given, where every file the command looks for is
// out of its reach too.
func (a *app) resolvedStateDir() (string, error) {
	dir, err := trustedpath.Resolve(a.stateDir)
	switch {
	case errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0:
		// Not for root: root without CAP_DAC_OVERRIDE (provd's units)
		// gets EACCES too, and the walk would be skipped (review 68).
		return a.stateDir, nil
	case errors.Is(err, fs.ErrNotExist):
		// A link on the way leads nowhere (a file system not mounted
		// yet): no state, and none can be made there (review 68).
		return a.stateDir, nil
	}
	return dir, err
}

// openTPM opens the TPM the flags name. The caller closes it; with -v the
// command count and time spent in the TPM are printed at close.
// A one-shot open asks the self-test's result only (the daemon runs the
// full test at start; provd tpm selftest on demand).
func (a *app) openTPM(ctx context.Context) (*tpm.TPM, func(), error) {
	stateDir, err := a.resolvedStateDir()
	if err != nil {
		return nil, nil, err
	}
	t, err := tpm.Open(ctx, tpm.Options{Spec: a.tpmSpec, StateDir: stateDir, Logger: a.log})
	if err != nil {
		return nil, nil, err
	}
	// provd persists the SRK only in provision and for what lives under
	// it in a provisioned state (tpm.PersistSRK); every other command
	// uses a transient copy where 0x81000001 is empty.
	t.TransientSRKOnly()
	closer := func() {
		st := t.Stats()
		if err := t.Close(); err != nil {
			a.log.Warn("closing TPM", "err", err)
		}
		if a.verbose {
			fmt.Fprintf(a.deps.Stderr, "provd: TPM %s: %d commands (%d retried), %v waiting\n", t.Spec(), st.Commands, st.Retries, st.Wait)
		}
	}
	return t, closer, nil
}

// emit prints v as indented JSON with -o json, else calls text.
func (a *app) emit(v any, text func(w io.Writer)) error {
	if a.output == "json" {
		enc := json.NewEncoder(terminalSafe{a.deps.Stdout, true})
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(terminalSafe{w: a.deps.Stdout})
	return nil
}

// terminalSafe writes output with every rune that does not print, but the
// output's own newlines and tabs, and every byte that is not UTF-8,
// escaped: as its Go escape (\x1b, \u202e, \x9b) in human output, as a
// JSON escape (\u009b) under -o json, where Go's encoder leaves C1
// controls and bidi overrides raw (review 55). The text a command shows
// comes from records, certificates, peers' files, a daemon's or an
// endpoint's answers, and their control characters must not move the
// cursor, erase, retitle or reorder what a terminal shows (review 53). A
// field that may hold a newline or a tab of its own is quoted where it is
// printed (printable), as audit show and key list do.
type terminalSafe struct {
	w    io.Writer
	json bool
}

func (t terminalSafe) Write(p []byte) (int, error) {
	if utf8.Valid(p) && !bytes.ContainsFunc(p, unsafeRune) {
		return t.w.Write(p)
	}
	var b []byte
	for i := 0; i < len(p); {
		r, n := utf8.DecodeRune(p[i:])
		switch {
		case r == utf8.RuneError && n <= 1 && t.json:
			b = append(b, `\ufffd`...)
		case r == utf8.RuneError && n <= 1:
			b = fmt.Appendf(b, "\\x%02x", p[i])
		case !unsafeRune(r):
			b = append(b, p[i:i+n]...)
		case t.json:
			for _, u := range utf16.Encode([]rune{r}) {
				b = fmt.Appendf(b, "\\u%04x", u)
			}
		default:
			q := strconv.QuoteRune(r) // '\x1b', '\u202e'
			b = append(b, q[1:len(q)-1]...)
		}
		i += n
	}
	if _, err := t.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

// unsafeRune: r does not print and is not the output's own layout.
func unsafeRune(r rune) bool { return r != '\n' && r != '\t' && !unicode.IsPrint(r) }

// noArgs is cobra.NoArgs with a usage exit code.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError(fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args))
	}
	return nil
}

// exactArgs is cobra.ExactArgs with a usage exit code.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError(fmt.Errorf("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args)))
		}
		return nil
	}
}
