package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"testing"

	"github.com/provd/provd/tpm"
)

// Every kind of the table survives the wire: the rebuilt error errors.Is
// the sentinel and carries the exit code the daemon decided, the one the
// in-process CLI would use.
func TestErrorKindsRoundTrip(t *testing.T) {
	for _, k := range Kinds() {
		t.Run(k.Name, func(t *testing.T) {
			err := fmt.Errorf("operation: %w", k.Err)
			b, merr := json.Marshal(NewErrorBody(err, nil))
			if merr != nil {
				t.Fatal(merr)
			}
			got := DecodeError(http.StatusInternalServerError, b)
			if !errors.Is(got, k.Err) {
				t.Errorf("remote error %v (kinds %v) is not %v", got, ErrorKinds(err), k.Err)
			}
			if got.ExitCode() != k.Exit || ExitCode(got) != ExitCode(err) {
				t.Errorf("remote exit code %d, want %d", got.ExitCode(), k.Exit)
			}
			if HTTPStatus(got.Kinds) != HTTPStatus(ErrorKinds(err)) {
				t.Errorf("HTTP status %d, want %d", HTTPStatus(got.Kinds), HTTPStatus(ErrorKinds(err)))
			}
		})
	}
	// A newer daemon's kind is no sentinel here; its exit code still holds.
	got := DecodeError(http.StatusServiceUnavailable, []byte(`{"error":{"message":"m","kinds":["from_the_future"],"exit_code":10}}`))
	if got.ExitCode() != 10 || len(got.Unwrap()) != 0 {
		t.Errorf("unknown kind: %#v", got)
	}
	// An exit code that is no error's (0, or one that wraps around) is not
	// taken: the kinds decide, else ExitError.
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"error":{"message":"m","kinds":["refused"],"exit_code":0}}`, ExitNotPermitted},
		{`{"error":{"message":"m","kinds":["refused"],"exit_code":256}}`, ExitNotPermitted},
		{`{"error":{"message":"m","kinds":["from_the_future","not_found"],"exit_code":-1}}`, ExitNotFound},
		{`{"error":{"message":"m","kinds":[],"exit_code":0}}`, ExitError},
	} {
		if got := DecodeError(http.StatusForbidden, []byte(tc.body)); got.ExitCode() != tc.want || ExitCode(got) != tc.want {
			t.Errorf("%s: exit %d, want %d", tc.body, got.ExitCode(), tc.want)
		}
	}
	// A body that is no error body (a proxy's) is still an error, exit 1.
	if got := DecodeError(http.StatusBadGateway, []byte("<html>")); got.ExitCode() != ExitError || got.Status != http.StatusBadGateway {
		t.Errorf("foreign body: %#v", got)
	}
}

// An unmet policy keeps its PCR list across the wire.
func TestPolicyErrorRoundTrip(t *testing.T) {
	pe := &PolicyError{Differ: []int{7, 16}, Bank: "sha256", Err: tpm.ErrPolicyNotSatisfied}
	b, err := json.Marshal(NewErrorBody(fmt.Errorf("unseal: %w", pe), nil))
	if err != nil {
		t.Fatal(err)
	}
	got := DecodeError(http.StatusPreconditionFailed, b)
	var rpe *PolicyError
	if !errors.As(got, &rpe) || !reflect.DeepEqual(rpe.Differ, pe.Differ) || rpe.Bank != pe.Bank {
		t.Fatalf("policy detail lost: %#v", got)
	}
	if !errors.Is(got, tpm.ErrPolicyNotSatisfied) || got.ExitCode() != ExitPolicy {
		t.Errorf("kinds %v exit %d", got.Kinds, got.ExitCode())
	}
}
