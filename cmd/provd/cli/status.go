package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/provd/provd/api"
)

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Provisioned or not, the PK, its policy against the current PCRs, keys, audit chain",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				s, err := ag.Status(cmd.Context())
				if err != nil {
					return err
				}
				return a.emit(s, func(w io.Writer) {
					if !s.Provisioned {
						fmt.Fprintln(w, "provisioned: no (provd provision)")
					} else {
						fmt.Fprintf(w, "provisioned: yes\nPK name:     %s\n", s.PKName)
						switch s.TPMTrust {
						case "":
							fmt.Fprintln(w, "TPM:         identity NOT pinned")
						case api.TrustOnFirstUse:
							fmt.Fprintln(w, "TPM:         identity pinned on TRUST ON FIRST USE (no manufacturer vouched for its EK)")
						default:
							fmt.Fprintln(w, "TPM:         identity pinned, EK certified by a trusted manufacturer")
						}
						if s.Officer != "" {
							fmt.Fprintf(w, "officer:     %s (derivations and exports need its approval)\n", s.Officer)
						} else {
							fmt.Fprintln(w, "officer:     none (no derived and no extractable keys)")
						}
						if s.DName != "" {
							fmt.Fprintf(w, "derivation parent: %s\n", s.DName)
						}
						if s.Movable != "" {
							fmt.Fprintf(w, "movable:     %s (recipes: key approve --movable)\n", s.Movable)
						}
						if s.Policy != nil {
							printPolicy(w, *s.Policy)
						} else {
							fmt.Fprintf(w, "policy:      %s, not checked (identity NOT pinned)\n", s.PolicyKind)
						}
						fmt.Fprintf(w, "keys:        %d\n", s.Keys)
					}
					fmt.Fprintf(w, "audit:       %d records, head %s", s.AuditLines, s.AuditHead)
					if s.AuditError != "" {
						fmt.Fprintf(w, " (%s)", printable(s.AuditError))
					}
					fmt.Fprintln(w)
					if v := s.Attestation; v != nil {
						verdict := "fail"
						if v.Pass {
							verdict = "pass"
						}
						// An officer-role caller's or an endpoint's text: a
						// newline of its own would draw a line (review 55).
						fmt.Fprintf(w, "attestation: %s at %s (%s, device %s…)\n", verdict, v.At.Format(time.RFC3339), printable(v.Endpoint), printable(truncate(v.DeviceID, 16)))
						for _, r := range v.Reasons {
							fmt.Fprintf(w, "             %s\n", printable(r.String()))
						}
					}
					for _, warning := range s.Warnings {
						fmt.Fprintf(w, "WARNING:     %s\n", printable(warning))
					}
				})
			})
		},
	}
}

func (a *app) auditCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "audit",
		Short: "The tamper-evident audit trail: show, verify, repair, reanchor",
	}
	c.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the audit trail's records",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				// A trail that fails verification is shown as far as it
				// parses, then the failure (exit 14).
				recs, err := ag.AuditRecords(cmd.Context())
				if len(recs) == 0 && err != nil {
					return err
				}
				if eerr := a.emit(recs, func(w io.Writer) {
					for _, r := range recs {
						fmt.Fprintf(w, "%4d %s uid=%d %-16s %s%s\n", r.Seq, r.Time.Format("2006-01-02T15:04:05Z"), r.UID, printable(r.Op), printable(r.Result), objectsText(r.Objects))
					}
				}); eerr != nil {
					return eerr
				}
				return err
			})
		},
	}, &cobra.Command{
		Use:   "verify",
		Short: "Replay the audit chain and compare it with the TPM's NV anchor (exit 14 when tampered)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				rep, err := ag.AuditVerify(cmd.Context())
				if err != nil {
					return err
				}
				return a.emit(rep, func(w io.Writer) {
					fmt.Fprintf(w, "audit trail intact: %d records, head %x, anchored in the TPM\n", rep.Lines, rep.Head)
				})
			})
		},
	})
	var anchorLast bool
	repair := &cobra.Command{
		Use:   "repair",
		Short: "Repair what a crash left in the audit trail (a torn or unanchored last line); tampering is refused",
		Long: `A crash while appending can leave a torn last line (cut away: it was never
acknowledged) or a last line written but not yet extended into the TPM anchor.
The latter cannot be told apart from a forged line, so it is accepted only with
--anchor-last, after you have read it (provd audit verify names it). A crash
while the trail moved to a new anchor (provision, audit reanchor) leaves the move
marked in audit.gate: the repair, or the next audited operation, makes it again
and records it. Anything else is tampering: refused, exit 14. The repair itself
is recorded.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				rep, err := ag.AuditRepair(cmd.Context(), anchorLast)
				if err != nil {
					return err
				}
				return a.emit(rep, func(w io.Writer) {
					fmt.Fprintf(w, "audit trail repaired: %d records, head %x\n", rep.Lines, rep.Head)
				})
			})
		},
	}
	repair.Flags().BoolVar(&anchorLast, "anchor-last", false, "accept an unanchored last line as genuine")
	c.AddCommand(repair)
	c.AddCommand(&cobra.Command{
		Use:   "reanchor",
		Short: "Move the audit trail to a new TPM anchor after its anchor was removed or replaced, recording what was found (crypto officer)",
		Long: `The audit trail is pinned by an NV extend index (0x01707601) that only this
state directory's gate key can extend. Another process cannot extend it, but
where the TPM's owner hierarchy has no password it can undefine it or define
another index at its handle. provd then refuses audited operations (exit 14)
rather than act without a record, and audit verify says what it found.

reanchor is the way out, for the crypto officer after investigating:
  - it writes an audit-anchor record saying what verify found, what the TPM
    held at the handle (name and value) and how many lines there were;
  - it replaces the index with a new gated one under a new gate key;
  - the record's prev ties the new anchor to every earlier line, so lines
    before it can still not be changed unseen.
A trail that its own anchor contradicts (a line edited, removed or added while
the anchor stayed) or whose lines no longer link up is not blessed: it is kept
as audit-<UTC time>.log beside the state, and a new trail starts whose first
record names it and its SHA-256.

Set an owner password on production TPMs (tpm2_changeauth -c owner): then no
other process can remove the anchor at all.`,
		Example: "  provd audit verify          # what is wrong\n  provd audit reanchor        # record it, anchor anew\n  provd audit show -o json    # the audit-anchor record",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withAgent(cmd.Context(), func(ag api.Service) error {
				res, err := ag.AuditReanchor(cmd.Context())
				if err != nil {
					return err
				}
				return a.emit(res, func(w io.Writer) {
					if res.Found != "" {
						fmt.Fprintf(w, "found: %s\n", res.Found)
					}
					if res.ArchivedLog != "" {
						fmt.Fprintf(w, "the old trail's lines no longer linked up: kept as %s\n", res.ArchivedLog)
					}
					fmt.Fprintf(w, "audit trail re-anchored: %d records, head %s; record %d (audit-anchor) says what the TPM held\n", res.Lines, res.Head, res.Record.Seq)
				})
			})
		},
	})
	return c
}

// objectsText is an audit record's objects as " key=value", sorted by key,
// values quoted when they hold a space or are empty.
func objectsText(objects map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(objects)) {
		v := objects[k]
		if v == "" || strings.ContainsAny(v, " \t\"=") {
			v = strconv.Quote(v)
		}
		fmt.Fprintf(&b, " %s=%s", printable(k), printable(v))
	}
	return b.String()
}

// printable is s as a terminal may show it: quoted (Go syntax) when it is
// not valid UTF-8 or holds a character that does not print, raw otherwise.
// Records, event texts and names come from callers and files provd does
// not trust: raw, a terminal's control characters in them (a carriage
// return, an erase, a cursor move; 8-bit ones too: 0x9b is no valid UTF-8
// and read as U+FFFD it "prints") redraw the lines around them (review 49,
// 51: fw log; review 52's reading: audit show, where an officer-role
// caller's refused request records its key name as sent).
func printable(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) && utf8.ValidString(s) {
		return s
	}
	return strconv.Quote(s)
}

// truncate is s cut to at most n bytes, at a rune's start.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
