// Package fleetserver is what provd-fleet links beyond provd: the fleet
// endpoint behind `provd fleet serve` (attest/fleet, with its SQLite and
// PostgreSQL drivers and its Prometheus metrics) and the man pages' writer.
//
// It stands apart so that provd, the binary every device runs (its daemon,
// its boot hook, its one-shot commands), links none of it: a device
// carries no database driver or HTTP server it never uses, and starts
// faster with a smaller footprint (docs/benchmarks.md). provd hands these
// commands to provd-fleet, installed beside it (package cli, handoff.go).
package fleetserver

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/cmd/provd/cli"
)

// Server is cli.Server for provd-fleet and for the command tree's tests.
type Server struct{}

var _ cli.Server = Server{}

// ServeFleet opens the store and serves the endpoint on ln until ctx ends.
func (Server) ServeFleet(ctx context.Context, ln net.Listener, c cli.FleetConfig) error {
	st, err := fleet.Open(ctx, c.DB)
	if err != nil {
		return err
	}
	defer st.Close()
	ops := make([][32]byte, len(c.Operators))
	for i, tok := range c.Operators {
		ops[i] = fleet.TokenHash(tok)
	}
	srv := &http.Server{
		Handler:           (&fleet.Server{E: fleet.New(fleet.Config{Store: st, Roots: c.Roots, Authority: c.Authority}), Operators: ops, Log: c.Log}).Handler(),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{c.Certificate}},
		ReadHeaderTimeout: fleet.ServerTimeouts.ReadHeader, ReadTimeout: fleet.ServerTimeouts.Read,
		WriteTimeout: fleet.ServerTimeouts.Write, IdleTimeout: fleet.ServerTimeouts.Idle,
		MaxHeaderBytes: 64 << 10,
	}
	if c.Serving != nil {
		c.Serving()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}

// WriteMan writes a man page in section 8 for every command of root.
func (Server) WriteMan(root *cobra.Command, dir, source string) error {
	root.DisableAutoGenTag = true
	return doc.GenManTree(root, &doc.GenManHeader{Title: "PROVD", Section: "8", Source: source}, dir)
}
