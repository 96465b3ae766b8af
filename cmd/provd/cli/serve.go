package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/agent/server"
	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/systemd"
)

// daemon returns a client for the daemon when no TPM is named and its
// socket answers; nil means: work in-process.
func (a *app) daemon(ctx context.Context) (*client.Client, error) {
	if a.tpmSpec != "" {
		return nil, nil
	}
	if err := client.Check(ctx, a.socket); err != nil {
		if errors.Is(err, api.ErrNotPermitted) {
			// Something is there that is not provd's daemon: said, not
			// worked around (review 63).
			return nil, err
		}
		a.log.Debug("daemon socket does not answer; working in-process", "socket", a.socket)
		return nil, nil
	}
	a.log.Debug("using the daemon", "socket", a.socket)
	return client.New(a.socket), nil
}

func (a *app) serveCmd() *cobra.Command {
	var configPath, socketGroup, socketMode string
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: provd's API on a unix socket, one TPM connection for every client",
		Long: `Run provd as a daemon (systemd Type=notify; see docs/systemd.md): open the TPM
(start-up and self-test), take the socket systemd passes (provd.socket) or bind
--socket itself, and serve the API of docs/api.md. The CLI uses the daemon when
its socket answers and --tpm is not given.

Each request's role comes from the connection's peer credentials: crypto
officer (root or group provd-admin) or user (group provd), as mapped in
--config; anyone else is refused, and the refusal is audited. All TPM work goes
through one queue. SIGHUP re-reads the configuration; SIGTERM drains in-flight
requests, flushes handles and sends TPM2_Shutdown(STATE).

With --tpm (or $PROVD_TPM) the daemon uses that TPM instead of the config's.
swtpm serves one connection at a time: while the daemon holds it, an
in-process provd --tpm on the same swtpm waits.`,
		Example: `  provd serve                                   # under systemd (provd.service)
  provd --tpm sim serve --socket ./provd.sock --socket-group ""`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := new(slog.LevelVar)
			log := slog.New(systemd.NewLogHandler(&slog.HandlerOptions{Level: level}))
			explicit := cmd.Flags().Changed("config") || a.deps.Getenv("PROVD_CONFIG") != ""
			load := func() (server.Config, error) {
				cfg, err := server.LoadConfig(configPath, nil)
				if errors.Is(err, fs.ErrNotExist) && !explicit {
					var notes []string
					cfg, notes = server.DefaultConfig(nil)
					log.Info("no configuration file; using the defaults", "config", configPath)
					for _, n := range notes {
						log.Info(n)
					}
				} else if err != nil {
					return cfg, usageError(err)
				}
				if a.tpmSpec != "" {
					cfg.TPM = a.tpmSpec
				}
				if cmd.Flags().Changed("socket") || a.deps.Getenv("PROVD_SOCKET") != "" {
					cfg.Socket.Path = a.socket
				}
				if cmd.Flags().Changed("socket-group") {
					cfg.Socket.Group = socketGroup
				}
				if cmd.Flags().Changed("socket-mode") {
					m, err := strconv.ParseUint(socketMode, 8, 32)
					if err != nil || m > 0o777 {
						return cfg, usageError(fmt.Errorf("--socket-mode %q: want an octal mode such as 0660", socketMode))
					}
					cfg.Socket.Mode = os.FileMode(m)
				}
				if a.verbose {
					cfg.LogLevel = slog.LevelDebug
				}
				return cfg, nil
			}
			cfg, err := load()
			if err != nil {
				return err
			}
			release, err := store.HoldServeLock(a.stateDir)
			if err != nil {
				return err
			}
			defer release()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			n := systemd.NewNotifier()
			return server.Run(cmd.Context(), server.DaemonConfig{
				Config:   cfg,
				StateDir: a.stateDir,
				Listen:   systemd.ListenOrActivated,
				Notifier: n,
				Watchdog: func(ctx context.Context, healthy func() error) error {
					return systemd.RunWatchdog(ctx, n.Watchdog, healthy)
				},
				Reload:   hup,
				Reconfig: load,
				LogLevel: level,
				Logger:   log,
				ExitCode: ExitCode,
			})
		},
	}
	configDefault := a.deps.Getenv("PROVD_CONFIG")
	if configDefault == "" {
		configDefault = server.DefaultConfigPath
	}
	c.Flags().StringVar(&configPath, "config", configDefault, "configuration file (env PROVD_CONFIG); without it, the defaults")
	c.Flags().StringVar(&socketGroup, "socket-group", server.DefaultSocketGroup, `group of the self-bound socket ("" keeps the process's)`)
	c.Flags().StringVar(&socketMode, "socket-mode", "0660", "mode of the self-bound socket (octal)")
	return c
}
