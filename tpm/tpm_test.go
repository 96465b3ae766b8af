package tpm_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestOpenSelfTestAndSRK(t *testing.T) {
	env := swtpmtest.Start(t)
	srk, err := env.TPM.SRK()
	if err != nil {
		t.Fatalf("SRK: %v", err)
	}
	if srk.Handle != tpm.SRKHandle || srk.Public.Type != tpm2.TPMAlgECC {
		t.Fatalf("SRK = %+v", srk)
	}
	// Cached: a second call sends nothing.
	before := env.TPM.Stats()
	if _, err := env.TPM.SRK(); err != nil {
		t.Fatal(err)
	}
	if d := env.TPM.Stats().Sub(before); d.Commands != 0 {
		t.Errorf("cached SRK sent %d commands", d.Commands)
	}
}

// persistForeignSRK replaces the SRK at 0x81000001 with a different
// primary (another unique value) and returns the SRK it evicted.
func persistForeignSRK(t *testing.T, tp *tpm.TPM) tpm.Object {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.EvictSRK(); err != nil {
		t.Fatal(err)
	}
	tmpl := tpm.SRKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{1}, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	})
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		PersistentHandle: tpm.SRKHandle}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	if err := tp.Flush(rsp.ObjectHandle); err != nil {
		t.Fatal(err)
	}
	return srk
}

// A foreign key at 0x81000001 is refused, never used.
func TestSRKMismatchRefused(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	tp := env.TPM
	srk := persistForeignSRK(t, tp)
	env.Reopen() // a new process: no cached SRK
	_, err := env.TPM.SRK()
	if !errors.Is(err, tpm.ErrSRKMismatch) {
		t.Fatalf("SRK() = %v, want ErrSRKMismatch", err)
	}
	// The foreign key is left where it was: provd does not touch what it does not own.
	obj, err := env.TPM.ReadPublic(tpm.SRKHandle)
	if err != nil || bytes.Equal(obj.Name.Buffer, srk.Name.Buffer) {
		t.Fatalf("foreign key disturbed: %v", err)
	}
}

// The secret of a create with sensitive data and of an unseal never crosses the
// TPM interface in plaintext.
func TestSecretsNeverCrossTheBusInPlaintext(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 48)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Seal(srk, nil, secret, nil)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	obj, err := tp.Load(srk, nil, blob)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got, err := tp.Unseal(obj, nil)
	if ferr := tp.Flush(obj.Handle); ferr != nil {
		t.Fatal(ferr)
	}
	if err != nil {
		t.Fatalf("Unseal: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatal("unsealed secret differs")
	}
	if rec.Len() == 0 {
		t.Fatal("recorder saw nothing")
	}
	if i := rec.Leak(secret); i >= 0 {
		t.Fatalf("secret bytes %d..%d crossed the TPM interface in plaintext", i, i+8)
	}
	rec.Reset()

	// Control: the same create without an encryption session does show the
	// secret, so the recorder would have caught a leak.
	_, err = tpm2.Create{
		ParentHandle: srk.Auth(tpm2.PasswordAuth(nil)),
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: blob.Public,
	}.Execute(tp)
	if err != nil {
		t.Fatalf("control create: %v", err)
	}
	if rec.Leak(secret) < 0 {
		t.Fatal("control: recorder did not see an unencrypted secret")
	}
}

// splitter is a TCP proxy that forwards TPM responses in small pieces with
// pauses, as a slow or fragmenting link would.
func startSplitter(t *testing.T, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			go func() { _, _ = copyBuffer(u, c, 4096, 0); u.Close() }()
			go func() { _, _ = copyBuffer(c, u, 3, time.Millisecond); c.Close() }()
		}
	}()
	return l.Addr().String()
}

func copyBuffer(dst net.Conn, src net.Conn, chunk int, pause time.Duration) (int, error) {
	buf := make([]byte, 4096)
	total := 0
	for {
		n, err := src.Read(buf)
		for off := 0; off < n; off += chunk {
			end := min(off+chunk, n)
			if _, werr := dst.Write(buf[off:end]); werr != nil {
				return total, werr
			}
			total += end - off
			if pause > 0 {
				time.Sleep(pause)
			}
		}
		if err != nil {
			return total, err
		}
	}
}

// Responses that arrive in 3-byte pieces are reassembled by the framed transport.
func TestTransportReassemblesSplitResponses(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	env.CloseTPM()
	proxy := startSplitter(t, env.Spec[len("swtpm://"):])
	tp, err := tpm.Open(t.Context(), tpm.Options{Spec: "swtpm://" + proxy})
	if err != nil {
		t.Fatalf("open through splitting proxy: %v", err)
	}
	defer tp.Close()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	rsp, err := tpm2.GetRandom{BytesRequested: 32}.Execute(tp)
	if err != nil || len(rsp.RandomBytes.Buffer) != 32 {
		t.Fatalf("GetRandom through proxy: %v", err)
	}
	if srk.Public.Type != tpm2.TPMAlgECC {
		t.Fatal("bad SRK through proxy")
	}
	if left, err := tp.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("leftovers %v %v", left, err)
	}
}

// wantProvdRefusal fails the test unless err is a refusal of provd's own
// argument checks: these have no sentinel, but they are never a *tpm.Error,
// which only a TPM response code becomes, so a check that was skipped and
// left the refusal to the TPM is caught.
func wantProvdRefusal(t *testing.T, err error, what string) {
	t.Helper()
	var te *tpm.Error
	switch {
	case err == nil:
		t.Errorf("%s: accepted", what)
	case errors.As(err, &te):
		t.Errorf("%s: refused by the TPM (%v), want provd to refuse it before sending", what, err)
	}
}

func TestTypedErrors(t *testing.T) {
	env := swtpmtest.Start(t)
	_, err := env.TPM.ReadPublic(0x81000123)
	if !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("ReadPublic(absent) = %v, want ErrNotFound", err)
	}
	var te *tpm.Error
	if !errors.As(err, &te) || te.Command != "TPM2_ReadPublic" {
		t.Fatalf("want *tpm.Error naming the command, got %#v", err)
	}
}

// Handles a dead client left in a TPM without resource manager are flushed at
// the next Open, so a crash cannot exhaust swtpm's 3 object slots.
func TestOpenFlushesStaleHandles(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Seal(srk, nil, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Fill the slots (swtpm has 3, one of them needed to use the
	// persistent SRK as parent).
	loaded := 0
	for ; loaded < 10; loaded++ {
		if _, err := tp.Load(srk, nil, blob); err != nil {
			if !errors.Is(err, tpm.ErrNoMemory) {
				t.Fatalf("load %d: %v, want ErrNoMemory once full", loaded, err)
			}
			break
		}
	}
	if loaded == 0 || loaded == 10 {
		t.Fatalf("loaded %d objects before running out", loaded)
	}
	// And sessions: one loaded, one context-saved (it stays active).
	for i := range 2 {
		s, err := tp.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		loaded++
		if i == 1 {
			if _, err := (tpm2.ContextSave{SaveHandle: s.Handle()}).Execute(tp); err != nil {
				t.Fatal(err)
			}
		}
	}
	env.NoLeakCheck() // this connection leaks on purpose, as a crashed client would
	env.CloseTPM()
	env.Reopen()
	if n := env.TPM.StaleFlushed(); n != loaded {
		t.Fatalf("flushed %d stale handles, want %d", n, loaded)
	}
	left, err := env.TPM.Leftovers()
	if err != nil || len(left) != 0 {
		t.Fatalf("leftovers after reopen: %v %v", left, err)
	}
}

// A wrong password is ErrBadAuth (exit 11: api's kinds table) and is never
// retried; enough of them lock the TPM out, and the lockout is reported as
// ErrLockout (exit 4).
func TestBadAuthAndLockoutAreTyped(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := tpm.SealTemplate(nil)
	tmpl.ObjectAttributes.NoDA = false // failures count against the lockout
	rsp, err := tpm2.Create{
		ParentHandle: srk.Auth(tpm2.PasswordAuth(nil)),
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			UserAuth: tpm2.TPM2BAuth{Buffer: []byte("right")},
			Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: []byte("s")}),
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tp.Load(srk, nil, tpm.Blob{Public: rsp.OutPublic, Private: rsp.OutPrivate})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(obj.Handle)
	var sawBadAuth, sawLockout bool
	for i := 0; i < 10 && !sawLockout; i++ {
		before := tp.Stats()
		_, err := tpm2.Unseal{ItemHandle: obj.Auth(tpm2.PasswordAuth([]byte("wrong")))}.Execute(tp)
		err = tpm.Wrap("TPM2_Unseal", err)
		// Only warnings (the TPM did not act) are resent: swtpm answers the
		// first DA-protected failure with TPM_RC_RETRY (0x922, measured).
		// An authorization failure itself is final.
		if d := tp.Stats().Sub(before); d.Commands-d.Retries != 1 {
			t.Fatalf("a failed authorization was sent %d times (%d retries): %v", d.Commands, d.Retries, err)
		}
		switch {
		case errors.Is(err, tpm.ErrBadAuth):
			sawBadAuth = true
		case errors.Is(err, tpm.ErrLockout):
			sawLockout = true
		default:
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if !sawBadAuth || !sawLockout {
		t.Fatalf("bad auth seen %v, lockout seen %v", sawBadAuth, sawLockout)
	}
}

func TestOpenUnixSocket(t *testing.T) {
	env := swtpmtest.Start(t, swtpmtest.WithUnixSocket())
	if !strings.HasPrefix(env.Spec, "unix:///") {
		t.Fatalf("spec %q", env.Spec)
	}
	info, err := env.TPM.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Manufacturer != "IBM" {
		t.Fatalf("manufacturer %q", info.Manufacturer)
	}
}

// The leak check sees loaded policy sessions (their handles are 0x03..., listed
// under the loaded-session kind 0x02...).
func TestLeftoversSeePolicySessions(t *testing.T) {
	env := swtpmtest.Start(t)
	ps, err := env.TPM.StartPolicySession(false)
	if err != nil {
		t.Fatal(err)
	}
	left, err := env.TPM.Leftovers()
	if err != nil || len(left) != 1 || left[0] != ps.Handle() {
		t.Fatalf("Leftovers = %x, %v; want the policy session %x", left, err, ps.Handle())
	}
	if err := ps.Close(); err != nil {
		t.Fatal(err)
	}
}

// warner answers the first n commands with code cc by rc, as a busy hardware
// TPM would, then passes everything through.
type warner struct {
	next transport.TPM
	cc   uint32
	rc   tpm2.TPMRC
	n    int
	sent int
}

func (w *warner) Send(cmd []byte) ([]byte, error) {
	if w.sent < w.n && len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:10]) == w.cc {
		w.sent++
		return swtpmtest.ErrorAnswer(w.rc), nil
	}
	return w.next.Send(cmd)
}

// Warnings after which the same command succeeds are retried after delays
// that start at 20ms and double; a TPM that keeps warning gets 8 retries, then
// its warning is returned; errors are not retried. The delays are recorded,
// not slept.
func TestWarningsAreRetried(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM() // each case opens its own connection; swtpm serves one at a time
	t.Cleanup(env.Reopen)
	ms := func(ds ...int) []time.Duration {
		var out []time.Duration
		for _, d := range ds {
			out = append(out, time.Duration(d)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		rc       tpm2.TPMRC
		n        int // commands answered with rc
		delays   []time.Duration
		finalErr bool // the command ends with rc
	}{
		{rc: tpm2.TPMRCRetry, n: 1, delays: ms(20)},
		{rc: tpm2.TPMRCYielded, n: 1, delays: ms(20)},
		{rc: tpm2.TPMRCTesting, n: 1, delays: ms(20)},
		{rc: tpm2.TPMRCNVRate, n: 1, delays: ms(20)},
		{rc: tpm2.TPMRCRetry, n: 3, delays: ms(20, 40, 80)},
		{rc: tpm2.TPMRCRetry, n: 100, delays: ms(20, 40, 80, 160, 320, 640, 1280, 2560), finalErr: true},
		{rc: tpm2.TPMRCFailure, n: 1, finalErr: true},
	} {
		w := &warner{cc: uint32(tpm2.TPMCCGetRandom), rc: tc.rc, n: tc.n}
		var slept []time.Duration
		tp, err := tpm.Open(t.Context(), tpm.Options{
			Spec:       env.Spec,
			Wrap:       func(n transport.TPM) transport.TPM { w.next = n; return w },
			RetrySleep: func(d time.Duration) { slept = append(slept, d) },
		})
		if err != nil {
			t.Fatal(err)
		}
		before := tp.Stats()
		_, err = (tpm2.GetRandom{BytesRequested: 8}).Execute(tp)
		d := tp.Stats().Sub(before)
		if cerr := tp.Close(); cerr != nil {
			t.Fatal(cerr)
		}
		if tc.finalErr {
			if !errors.Is(err, tc.rc) {
				t.Errorf("%v x%d: error %v, want %v", tc.rc, tc.n, err, tc.rc)
			}
		} else if err != nil {
			t.Errorf("%v x%d: %v", tc.rc, tc.n, err)
		}
		if !slices.Equal(slept, tc.delays) {
			t.Errorf("%v x%d: delays %v, want %v", tc.rc, tc.n, slept, tc.delays)
		}
		if want := int64(len(tc.delays)); d.Retries != want || d.Commands != want+1 {
			t.Errorf("%v x%d: %+v, want %d retries", tc.rc, tc.n, d, want)
		}
	}
}
