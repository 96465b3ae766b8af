// Package systemd is provd's edge to the service manager: sd_notify
// readiness and watchdog, socket activation with a self-bound fallback, and
// journal-native structured logging.
//
// It is the only package besides cmd that imports go-systemd, so that the
// agent, tpm, attest and policy packages stay testable and portable without a
// service manager: the agent sees a small Notifier interface, a net.Listener
// and a slog.Handler, and nothing of systemd itself. Every function here is a
// no-op or a plain fallback when the process is not running under systemd, so
// `provd serve` behaves the same from a shell, a container or a test.
//
// The unit files, a sysusers.d snippet and the default configuration live
// beside this package; docs/systemd.md explains each hardening line and the
// exposure rating that units_test.go enforces.
package systemd
