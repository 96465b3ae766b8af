package api_test

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// The exit code, in-process, for the sentinels the review found
// missing from one table or the other, and for the ones that were there.
func TestExitCodeOfSentinels(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{audit.ErrTampered, api.ExitTampered},
		{audit.ErrUnanchored, api.ExitTampered},
		{audit.ErrTornTail, api.ExitTampered},
		{audit.ErrLocked, api.ExitState},
		{audit.ErrMoved, api.ExitState},
		{api.ErrAuditMoveUnfinished, api.ExitState},
		{api.ErrStateChanged, api.ExitState},
		{store.ErrLocked, api.ExitState},
		{store.ErrNotFound, api.ExitNotFound},
		{store.ErrInvalidName, api.ExitUsage},
		{api.ErrBusy, api.ExitTPMResources},
		{api.ErrRefused, api.ExitNotPermitted},
		{api.ErrNotExtractable, api.ExitNotPermitted},
		{tpm.ErrPolicyNotSatisfied, api.ExitPolicy},
		{api.ErrTampered, api.ExitTampered},
		{api.ErrUntrustedTPM, api.ExitIdentity},
		{tpm.ErrResponseForged, api.ExitIdentity},
		{tpm.ErrIdentityMismatch, api.ExitIdentity},
		{api.ErrNotProvisioned, api.ExitNotProvisioned},
		{api.ErrKeyExists, api.ExitConflict},
		{catalog.ErrNotApproved, api.ExitNotPermitted},
		{api.ErrBadInput, api.ExitUsage},
		{store.ErrCorrupt, api.ExitState},
		{tpm.ErrLockout, api.ExitLockout},
		{tpm.ErrBadAuth, api.ExitBadAuth},
		{tpm.ErrFailureMode, api.ExitTPMFailure},
		{tpm.ErrNoTPM, api.ExitNoTPM},
		{tpm.ErrNoMemory, api.ExitTPMResources},
		{tpm.ErrSRKMismatch, api.ExitConflict},
		{context.DeadlineExceeded, api.ExitError},
		{context.Canceled, api.ExitInterrupted},
		{errors.New("anything else"), api.ExitError},
	} {
		err := fmt.Errorf("doing something: %w", tc.err)
		if got := api.ExitCode(err); got != tc.code {
			t.Errorf("api.ExitCode for %v: %d, want %d", tc.err, got, tc.code)
		}
	}
	// A verify error of the audit log is its kind and ErrTampered.
	verr := &audit.VerifyError{Line: 3, Kind: audit.ErrUnanchored, Reason: "test"}
	if got := api.ExitCode(fmt.Errorf("audit verify: %w", verr)); got != api.ExitTampered {
		t.Errorf("exit code for %v: %d, want %d", verr, got, api.ExitTampered)
	}
}

// The table is consistent: names unique, every sentinel found again by its
// name, and every exit code one of the documented constants.
func TestKindsTable(t *testing.T) {
	names := map[string]bool{}
	for _, k := range api.Kinds() {
		if names[k.Name] {
			t.Errorf("kind %q twice", k.Name)
		}
		names[k.Name] = true
		if api.KindError(k.Name) != k.Err {
			t.Errorf("KindError(%q) is not its sentinel", k.Name)
		}
		if k.HTTP < 400 {
			t.Errorf("kind %q: HTTP status %d", k.Name, k.HTTP)
		}
		if k.Exit == api.ExitOK || !slices.Contains(api.ErrorKinds(k.Err), k.Name) {
			t.Errorf("kind %q: exit %d, kinds of its sentinel %v", k.Name, k.Exit, api.ErrorKinds(k.Err))
		}
	}
}

// notOnTheWire are exported sentinels deliberately left out of the table,
// and why. Any other exported Err* variable of these packages must be in it.
var notOnTheWire = map[string]string{
	"audit.ErrAnchorEmpty":     "the agent's anchor reports it to package audit, which treats it as an empty log",
	"audit.ErrInvalidRecord":   "a bug of the caller of Append, not a state a user can act on",
	"audit.ErrNotWritten":      "tells the agent a record may be kept for later (audit.pending); what reaches a user is the cause, and audit_unanchored while it waits",
	"store.ErrReadOnly":        "a bug: a write inside View",
	"store.ErrOutput":          "the CLI's own output path (store.WriteOutput): the CLI makes it a usage error, it never crosses the wire",
	"tpm.ErrNVUninitialized":   "the agent maps it (audit.ErrAnchorEmpty, not provisioned)",
	"tpm.ErrTransport":         "an I/O failure talking to the TPM: exit 1, the message says what failed",
	"tpm.ErrNoSharedSession":   "the agent's audit anchor then reads and prepares apart; it never reaches a user",
	"tpm.ErrNoSession":         "the agent's audit anchor then takes NV_ReadPublic's word, as without a pinned SRK it must; it never reaches a user",
	"tpm.ErrPersistentGate":    "the agent's audit anchor then loads the gate from its blob and proves it again (withGate); it never reaches a user",
	"policy.ErrNoSignedPolicy": "travels inside *api.PolicyError, which is policy_not_satisfied",
	"policy.ErrBadSignature":   "policy install maps it to api.ErrNotPermitted (not_permitted, exit 5)",
	"catalog.ErrUsage":         "the agent wraps it in api.ErrBadInput (bad_input, exit 2)",
	"catalog.ErrUnknownHash":   "api.ParseHash wraps it in api.ErrBadInput (bad_input, exit 2)",
	"catalog.ErrKeyMismatch":   "the agent wraps it in api.ErrTampered (a duplicate whose private part is not the key's)",
	"tpm.ErrDuplicate":         "the agent wraps it in api.ErrTampered (tampered, exit 14)",
	"keywrap.ErrSize":          "the agent and the CLI wrap it in api.ErrBadInput (bad_input, exit 2)",
	"keywrap.ErrComponents":    "the agent and the CLI wrap it in api.ErrBadInput (bad_input, exit 2)",
}

// Every exported sentinel of the packages whose errors reach the CLI is in
// the kinds table or in notOnTheWire: the two hand-kept tables that drifted
// apart are one now, and this keeps new sentinels from being forgotten.
func TestEverySentinelHasAKind(t *testing.T) {
	root := ".."
	inTable := map[error]bool{}
	for _, k := range api.Kinds() {
		inTable[k.Err] = true
	}
	// The sentinels, by qualified name, as the packages export them.
	exported := map[string]error{
		"api.ErrNotProvisioned": api.ErrNotProvisioned, "api.ErrAlreadyProvisioned": api.ErrAlreadyProvisioned,
		"api.ErrNotPermitted": api.ErrNotPermitted, "api.ErrNotFound": api.ErrNotFound, "api.ErrBadInput": api.ErrBadInput,
		"api.ErrRefused": api.ErrRefused, "api.ErrBusy": api.ErrBusy, "api.ErrNotExtractable": api.ErrNotExtractable,
		"api.ErrKeyExists": api.ErrKeyExists, "api.ErrTampered": api.ErrTampered, "api.ErrUntrustedTPM": api.ErrUntrustedTPM,
		"tpm.ErrResponseForged": tpm.ErrResponseForged, "tpm.ErrIdentityMismatch": tpm.ErrIdentityMismatch,
		"audit.ErrTampered": audit.ErrTampered, "audit.ErrUnanchored": audit.ErrUnanchored, "audit.ErrTornTail": audit.ErrTornTail,
		"audit.ErrLocked": audit.ErrLocked, "audit.ErrMoved": audit.ErrMoved,
		"api.ErrAuditMoveUnfinished": api.ErrAuditMoveUnfinished, "api.ErrStateChanged": api.ErrStateChanged,
		"store.ErrLocked": store.ErrLocked, "store.ErrUnknownSchema": store.ErrUnknownSchema, "store.ErrCorrupt": store.ErrCorrupt,
		"store.ErrInsecureDir": store.ErrInsecureDir, "store.ErrInvalidName": store.ErrInvalidName, "store.ErrNotFound": store.ErrNotFound,
		"tpm.ErrNoTPM": tpm.ErrNoTPM, "tpm.ErrFailureMode": tpm.ErrFailureMode, "tpm.ErrCommandFailed": tpm.ErrCommandFailed, "tpm.ErrIntegrity": tpm.ErrIntegrity, "tpm.ErrCommandTooLarge": tpm.ErrCommandTooLarge, "tpm.ErrPolicyNotSatisfied": tpm.ErrPolicyNotSatisfied,
		"tpm.ErrLockout": tpm.ErrLockout, "tpm.ErrBadAuth": tpm.ErrBadAuth, "tpm.ErrNoMemory": tpm.ErrNoMemory,
		"tpm.ErrNotFound": tpm.ErrNotFound, "tpm.ErrUnsupported": tpm.ErrUnsupported, "tpm.ErrSRKMismatch": tpm.ErrSRKMismatch,
		"catalog.ErrNotApproved": catalog.ErrNotApproved, "catalog.ErrNotDerivable": catalog.ErrNotDerivable,
		"catalog.ErrNotCreatable": catalog.ErrNotCreatable,
		"api.ErrKCVMismatch":      api.ErrKCVMismatch, "api.ErrAttestationFailed": api.ErrAttestationFailed, "keywrap.ErrIntegrity": keywrap.ErrIntegrity,
	}
	found := map[string]bool{}
	for pkg, dir := range map[string]string{"api": "api", "agent": "agent", "audit": "audit", "store": "store", "tpm": "tpm", "policy": "policy", "catalog": "catalog", "keywrap": "keywrap"} {
		for _, name := range sentinelsIn(t, filepath.Join(root, dir)) {
			q := pkg + "." + name
			found[q] = true
			if _, ok := notOnTheWire[q]; ok {
				continue
			}
			err, ok := exported[q]
			if !ok {
				t.Errorf("%s is an exported sentinel this test does not know: add it to the kinds table (api/kinds.go) "+
					"with its exit code, docs/exit-codes.md and docs/api.md, and to this test; or to notOnTheWire with the reason", q)
				continue
			}
			if !inTable[err] {
				t.Errorf("%s is not in the kinds table (api/kinds.go)", q)
			}
		}
	}
	for q := range exported {
		if !found[q] {
			t.Errorf("%s not found in the sources: is the parse right?", q)
		}
	}
}

// sentinelsIn lists the package-level Err* variables of the non-test files
// in dir.
func sentinelsIn(t *testing.T, dir string) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, sp := range gd.Specs {
				for _, n := range sp.(*ast.ValueSpec).Names {
					if strings.HasPrefix(n.Name, "Err") && n.IsExported() {
						names = append(names, n.Name)
					}
				}
			}
		}
	}
	return names
}

// docs/exit-codes.md lists, for each code, exactly the kinds the table gives
// it, and docs/api.md lists every kind in table order.
func TestKindsDocumented(t *testing.T) {
	root := ".."
	b, err := os.ReadFile(filepath.Join(root, "docs", "exit-codes.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[int][]string{}
	var order []string
	for _, k := range api.Kinds() {
		want[k.Exit] = append(want[k.Exit], k.Name)
		order = append(order, k.Name)
	}
	tick := regexp.MustCompile("`([a-z_]+)`")
	got := map[int][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 {
			continue
		}
		code, err := strconv.Atoi(strings.TrimSpace(cells[1]))
		if err != nil {
			continue
		}
		got[code] = []string{}
		for _, m := range tick.FindAllStringSubmatch(cells[3], -1) {
			got[code] = append(got[code], m[1])
		}
	}
	for code, names := range want {
		g, ok := got[code]
		if !ok {
			t.Errorf("docs/exit-codes.md has no row for exit code %d", code)
			continue
		}
		if !slices.Equal(g, names) {
			t.Errorf("docs/exit-codes.md, code %d: kinds %v, want %v (table order)", code, g, names)
		}
	}
	for code, g := range got {
		if _, ok := want[code]; !ok && len(g) > 0 {
			t.Errorf("docs/exit-codes.md, code %d: kinds %v that the table does not give it", code, g)
		}
	}

	b, err = os.ReadFile(filepath.Join(root, "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	// The HTTP statuses: "- NNN: `kind`, ..." lists every kind whose status
	// is not 500, under its status, in table order.
	wantStatus := map[int][]string{}
	for _, k := range api.Kinds() {
		if k.HTTP != 500 {
			wantStatus[k.HTTP] = append(wantStatus[k.HTTP], k.Name)
		}
	}
	statusLine := regexp.MustCompile("(?m)^- ([0-9]{3}): (`.*)$")
	gotStatus := map[int][]string{}
	for _, m := range statusLine.FindAllStringSubmatch(doc, -1) {
		code, _ := strconv.Atoi(m[1])
		for _, k := range tick.FindAllStringSubmatch(m[2], -1) {
			gotStatus[code] = append(gotStatus[code], k[1])
		}
	}
	for code, names := range wantStatus {
		if !slices.Equal(gotStatus[code], names) {
			t.Errorf("docs/api.md, HTTP %d: kinds %v, want %v", code, gotStatus[code], names)
		}
	}
	for code, names := range gotStatus {
		if _, ok := wantStatus[code]; !ok {
			t.Errorf("docs/api.md, HTTP %d: kinds %v that the table does not give it", code, names)
		}
	}
	i := strings.Index(doc, "- `kinds`: every sentinel")
	j := strings.Index(doc, "The client rebuilds an")
	if i < 0 || j < i {
		t.Fatal("docs/api.md: no list of kinds under Errors")
	}
	var listed []string
	for _, m := range tick.FindAllStringSubmatch(doc[i:j], -1) {
		if m[1] != "kinds" {
			listed = append(listed, m[1])
		}
	}
	if !slices.Equal(listed, order) {
		t.Errorf("docs/api.md lists kinds %v, want %v", listed, order)
	}
}

// Every exit code the kinds give, and every one docs/exit-codes.md lists, has
// a line in ExitCodes (provd-exit-codes(7) is made from it), once.
func TestExitCodesListed(t *testing.T) {
	listed := map[int]bool{}
	for _, c := range api.ExitCodes() {
		if listed[c.Code] || c.Name == "" || c.Meaning == "" {
			t.Errorf("exit code %d listed twice or without a name and meaning", c.Code)
		}
		listed[c.Code] = true
	}
	for _, k := range api.Kinds() {
		if !listed[k.Exit] {
			t.Errorf("kind %s gives exit %d, which ExitCodes does not list", k.Name, k.Exit)
		}
	}
	b, err := os.ReadFile(filepath.Join("..", "docs", "exit-codes.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\| (\d+) \|`).FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[1])
		if !listed[n] {
			t.Errorf("docs/exit-codes.md lists %d, which ExitCodes does not", n)
		}
	}
}
