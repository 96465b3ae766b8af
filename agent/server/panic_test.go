package server

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/provd/provd/api"
)

// A panic in a handler (a bug; no input may reach one) is answered as an
// internal error with the kinds' JSON body, written to the audit trail, and
// leaves the daemon serving the next request.
func TestHandlerPanicIsA500AndAudited(t *testing.T) {
	ts := serveTPM(t)
	ep := endpoint{Route: api.Route{Method: "POST", Path: "/v1/test/panic", Op: "test-panic"}, Role: RoleUser}
	ts.mux.Handle(ep.Method+" "+ep.Path, handle(ts.Server, ep, func(context.Context, api.Empty) (api.Empty, error) {
		var names []string
		_ = names[len(names)] // index out of range, as checkKeyName once did
		return api.Empty{}, nil
	}))
	code, b := ts.call(t, "POST", "/v1/test/panic", api.Empty{})
	if code != http.StatusInternalServerError || !strings.Contains(string(b), "internal error in test-panic") {
		t.Fatalf("HTTP %d %s, want 500 naming the operation", code, b)
	}
	recs, err := ts.ag.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1]
	if last.Op != "test-panic" || !strings.Contains(last.Objects["fault"], "index out of range") {
		t.Fatalf("last audit record: %+v", last)
	}
	if code, b := ts.call(t, "GET", "/v1/status", nil); code != http.StatusOK {
		t.Fatalf("the next request: HTTP %d %s", code, b)
	}
	if !strings.Contains(ts.logs.String(), "request panicked") {
		t.Error("the panic is not in the daemon's log")
	}
}
