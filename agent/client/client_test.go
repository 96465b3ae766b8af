package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/server"
)

// Every kind of the table survives the wire: the client's error errors.Is
// the sentinel and carries the exit code the daemon decided, the one the
// in-process CLI would use.
func TestErrorKindsRoundTrip(t *testing.T) {
	for _, k := range agent.Kinds() {
		t.Run(k.Name, func(t *testing.T) {
			err := fmt.Errorf("operation: %w", k.Err)
			b, merr := json.Marshal(server.ErrorBody{Error: server.ErrorDetail{
				Message: err.Error(), Kinds: agent.ErrorKinds(err), ExitCode: agent.ExitCode(err)}})
			if merr != nil {
				t.Fatal(merr)
			}
			got := decodeError(http.StatusInternalServerError, b)
			if !errors.Is(got, k.Err) {
				t.Errorf("remote error %v (kinds %v) is not %v", got, agent.ErrorKinds(err), k.Err)
			}
			var ce *Error
			if !errors.As(got, &ce) || ce.ExitCode() != k.Exit || ce.ExitCode() != agent.ExitCode(err) {
				t.Errorf("remote exit code %d, want %d", ce.ExitCode(), k.Exit)
			}
		})
	}
	// A newer daemon's kind is no sentinel here; its exit code still holds.
	got := decodeError(http.StatusServiceUnavailable, []byte(`{"error":{"message":"m","kinds":["from_the_future"],"exit_code":10}}`))
	var ce *Error
	if !errors.As(got, &ce) || ce.ExitCode() != 10 || len(ce.Unwrap()) != 0 {
		t.Errorf("unknown kind: %#v", got)
	}
}
