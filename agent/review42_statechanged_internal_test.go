package agent

// Review 42: api.ErrStateChanged (kind state_changed, exit 8, HTTP 409)
// from updateUnderPK when another process replaced the PK (6f609ae).
//
// HELD: TestReview42StateChangedReachesTheCaller.
// Attack (another local process): provision --force in another process
// (its own connection behind the resource manager, review8Client) before
// a warm daemon's TPM2_ContextLoad of its kept PK context, while the
// daemon creates a key, (a) called in process (the one-shot CLI's path:
// cli.ExitCode is api.ExitCode for every error but a usage error,
// cmd/provd/cli/exit.go) and (b) through the daemon's wire: a unix-socket
// HTTP server that answers as agent/server's writeError does
// (api.NewErrorBody with the exit code function, api.HTTPStatus of the
// kinds: server.go) and agent/client.Client on the other end (the server
// package imports agent, so this internal test cannot mount it; its
// writeError is those two calls). Also a one-shot agent whose state's PK
// record is replaced under it (review 41's setup). Checked: exit 8, the
// kind state_changed first (the HTTP status is the first kind's), 409,
// errors.Is(api.ErrStateChanged) on the client's side, and a message
// that carries none of the secrets either state holds (every string
// value of a JSON field named *auth* in the state before and after: the
// PK's object_auth, the counter gate's, the keys' and the trail gate's
// authValues). Held: all of these.
import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// review42Secrets is every string value of a JSON field whose name
// contains "auth" in the state in dir.
func review42Secrets(t *testing.T, dir string) []string {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(k string, v any)
	walk = func(k string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k2, v2 := range x {
				walk(k2, v2)
			}
		case []any:
			for _, v2 := range x {
				walk(k, v2)
			}
		case string:
			if strings.Contains(strings.ToLower(k), "auth") && len(x) >= 16 {
				out = append(out, x)
			}
		}
	}
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		for _, o := range tx.Objects() {
			raw, err := tx.GetRaw(o)
			if err != nil {
				return err
			}
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				return err
			}
			walk("", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The files beside the state (the audit anchor's gate_auth among them).
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var v any
		if json.Unmarshal(b, &v) == nil {
			walk("", v)
		}
	}
	return out
}

func review42CheckStateChanged(t *testing.T, err error, secrets []string, status int) {
	t.Helper()
	kinds := api.ErrorKinds(err)
	var remote *api.Error
	if errors.As(err, &remote) {
		kinds = remote.Kinds
	}
	t.Logf("error %q: exit %d, kinds %v, HTTP %d (%d secrets of the states checked)", err, api.ExitCode(err), kinds, status, len(secrets))
	if !errors.Is(err, api.ErrStateChanged) {
		t.Errorf("not errors.Is(api.ErrStateChanged): %v", err)
	}
	if api.ExitCode(err) != api.ExitState {
		t.Errorf("exit %d, want %d", api.ExitCode(err), api.ExitState)
	}
	if len(kinds) == 0 || kinds[0] != "state_changed" {
		t.Errorf("kinds %v, want state_changed first", kinds)
	}
	if status != 0 && status != http.StatusConflict {
		t.Errorf("HTTP %d, want 409", status)
	}
	if got := api.HTTPStatus(api.ErrorKinds(err)); status == 0 && got != http.StatusConflict {
		t.Errorf("HTTP status for the error %d, want 409", got)
	}
	for _, s := range secrets {
		if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(s)) {
			t.Errorf("the message carries a secret of the state (%.6s…)", s)
		}
	}
}

func TestReview42StateChangedReachesTheCaller(t *testing.T) {
	t.Parallel()
	for _, wire := range []bool{false, true} {
		name := "in-process"
		if wire {
			name = "daemon-wire"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			env, bz, o, w, dir := review41Daemon(t)
			_ = env
			secrets := review42Secrets(t, dir)
			if len(secrets) < 1 {
				t.Fatalf("not mounted: %d secrets read from the state", len(secrets))
			}
			ptp, _ := review8Client(t, w)
			done := false
			bz.Set(review41ForceProvisionAt(t, ptp, dir, tpm2.TPMCCContextLoad, &done, func(api.ProvisionResult) { secrets = append(secrets, review42Secrets(t, dir)...) }))
			var err error
			status := 0
			if !wire {
				_, err = o.CreateKey(ctx, review41KeyReq("k2"))
			} else {
				sock := filepath.Join(t.TempDir(), "provd.sock")
				ln, lerr := net.Listen("unix", sock)
				if lerr != nil {
					t.Fatal(lerr)
				}
				srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
					if r.URL.Path != api.RouteKeyCreate.Path {
						http.NotFound(rw, r)
						return
					}
					var req api.CreateRequest
					if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
						http.Error(rw, err.Error(), http.StatusBadRequest)
						return
					}
					res, err := o.CreateKey(r.Context(), req)
					rw.Header().Set("Content-Type", "application/json")
					if err != nil {
						// agent/server's writeError(w, 0, err).
						body := api.NewErrorBody(err, api.ExitCode)
						rw.WriteHeader(api.HTTPStatus(body.Error.Kinds))
						_ = json.NewEncoder(rw).Encode(body)
						return
					}
					_ = json.NewEncoder(rw).Encode(res)
				})}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
				c := client.New(sock)
				defer c.Close()
				_, err = c.CreateKey(ctx, review41KeyReq("k2"))
				var remote *api.Error
				if errors.As(err, &remote) {
					status = remote.Status
				} else {
					t.Errorf("not the daemon's error: %v", err)
				}
			}
			bz.Set(nil)
			if !done {
				t.Fatalf("not mounted (%v)", err)
			}
			review42CheckStateChanged(t, err, secrets, status)
		})
	}
	t.Run("one-shot", func(t *testing.T) {
		b := &swtpmtest.Bus{}
		env := swtpmtest.Start(t, swtpmtest.WithBus(b))
		s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state"}
		s.open()
		if _, err := s.a.Provision(context.Background(), review8Req()); err != nil {
			t.Fatal(err)
		}
		secrets := review42Secrets(t, s.dir)
		if len(secrets) < 1 {
			t.Fatalf("not mounted: %d secrets read from the state", len(secrets))
		}
		done := false
		b.Set(srkRaceReplacePK(t, s.dir, tpm2.TPMCCCreate, &done, nil))
		_, err := s.a.CreateKey(context.Background(), review41KeyReq("k"))
		b.Set(nil)
		if !done {
			t.Fatalf("not mounted (%v)", err)
		}
		review42CheckStateChanged(t, err, secrets, 0)
	})
}
