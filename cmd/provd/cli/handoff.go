package cli

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/provd/provd/api"
)

// Server is what only provd-fleet links (package fleetserver): the fleet
// endpoint and the man pages' writer. provd, the binary every device runs,
// leaves Deps.Server nil and hands those two commands to provd-fleet, so
// that a device's daemon, boot hook and one-shot commands carry no
// database driver or HTTP server they never use (docs/benchmarks.md:
// start-up time and resident memory).
type Server interface {
	// ServeFleet serves the fleet endpoint on ln until ctx ends.
	ServeFleet(ctx context.Context, ln net.Listener, c FleetConfig) error
	// WriteMan writes a section 8 man page for each command of root into dir.
	WriteMan(root *cobra.Command, dir, source string) error
}

// FleetConfig is what `fleet serve` hands the endpoint.
type FleetConfig struct {
	DB          string // sqlite:///PATH or postgres://...
	Roots       *x509.CertPool
	Operators   []string      // the operators' bearer tokens
	Authority   crypto.Signer // nil: not the fleet's duplication authority
	Certificate tls.Certificate
	Log         *slog.Logger
	// Serving is called once the store is open, before the first request.
	Serving func()
}

// FleetBinary is the binary provd hands `fleet serve` and `man` to, found
// in provd's own directory (make install puts both there).
const FleetBinary = "provd-fleet"

// handOff replaces this process with provd-fleet, beside this binary, run
// with this invocation's arguments. Only provd-fleet's own directory is
// searched, never $PATH: whoever can write there can replace provd too.
func (a *app) handOff(cmd *cobra.Command) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	bin := filepath.Join(filepath.Dir(exe), FleetBinary)
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%w: `%s` runs %s, installed beside provd (this binary, for devices, does not link the fleet endpoint): %w", api.ErrNotFound, cmd.CommandPath(), FleetBinary, err)
	}
	return syscall.Exec(bin, append([]string{bin}, a.args...), os.Environ())
}
