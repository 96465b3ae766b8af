// Command provd-fleet is provd with the fleet endpoint linked in: the same
// command tree, where `fleet serve` serves (attest/fleet, SQLite,
// PostgreSQL, Prometheus) and `man` writes the man pages. provd, the
// device's binary, links neither and runs this binary for those two
// commands; a fleet host runs either.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/cmd/provd/cli/fleetserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Deps{
		Stdin:   os.Stdin,
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
		Getenv:  os.Getenv,
		Version: version,
		Server:  fleetserver.Server{},
	})
	stop()
	os.Exit(code)
}
