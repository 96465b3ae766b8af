package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/provd/provd/api"
)

// A sign's result is finished and checked by the host after the request
// has left the queue (handleChecked, issue 14): the TPM serves the next
// request meanwhile. A result whose check fails is never answered, even
// when the check made it; one whose check passes is.
func TestCheckedResultIsAnsweredOnlyWhenItsCheckPasses(t *testing.T) {
	ts := serveTPM(t)
	ep := endpoint{api.RouteKeySign, RoleUser}
	secretish := []byte("a-signature-the-host-check-refuses")
	for _, tc := range []struct {
		name   string
		check  error
		status int
	}{{"check fails", errors.New("TPM2_Sign: the signature does not verify"), http.StatusInternalServerError}, {"check passes", nil, http.StatusOK}} {
		t.Run(tc.name, func(t *testing.T) {
			inQueue := false
			h := handleChecked(ts.Server, ep, func(context.Context, api.SignRequest) (api.DataResponse, func(*api.DataResponse) error, error) {
				return api.DataResponse{}, func(res *api.DataResponse) error {
					// A copy: the handler wipes what it answered.
					res.Data = bytes.Clone(secretish)
					// The queue is free while the host checks.
					select {
					case ts.q.slot <- struct{}{}:
						<-ts.q.slot
					default:
						inQueue = true
					}
					return tc.check
				}, nil
			})
			body, _ := json.Marshal(api.SignRequest{Name: "k", Digest: make([]byte, 32)})
			r := httptest.NewRequest("POST", api.RouteKeySign.Path, bytes.NewReader(body))
			r = r.WithContext(context.WithValue(r.Context(), callerKey{}, callerResult{c: Caller{UID: os.Getuid(), GID: os.Getgid()}}))
			w := httptest.NewRecorder()
			h(w, r)
			if inQueue {
				t.Error("the check ran holding the queue")
			}
			got := w.Body.String()
			if w.Code != tc.status {
				t.Fatalf("status %d (%s), want %d", w.Code, got, tc.status)
			}
			var res api.DataResponse
			_ = json.Unmarshal(w.Body.Bytes(), &res)
			answered := bytes.Equal(res.Data, secretish)
			if answered != (tc.check == nil) || (tc.check != nil && strings.Contains(got, "a-signature")) {
				t.Errorf("check %v: answered the result %v (%s)", tc.check, answered, got)
			}
		})
	}
}
