// Command provd-fleet is provd with the fleet endpoint linked in: the same
// command tree, where `fleet serve` serves (attest/fleet, SQLite,
// PostgreSQL, Prometheus) and `man` writes the man pages. provd, the
// device's binary, links neither and runs this binary for those two
// commands; a fleet host runs either.
package main

import (
	"os"

	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/cmd/provd/cli/fleetserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() { os.Exit(cli.Run(version, fleetserver.Server{})) }
