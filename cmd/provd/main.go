// Command provd is the TPM 2.0-backed provisioning agent, the binary every
// device runs. The command tree lives in package cli; main only wires the
// process to it. It links no fleet endpoint: `fleet serve` and `man` run
// provd-fleet, installed beside it (cmd/provd-fleet).
package main

import (
	"os"

	"github.com/provd/provd/cmd/provd/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() { os.Exit(cli.Run(version, nil)) }
