// Package server is provd's daemon: the HTTP/JSON API on a unix socket
// (docs/api.md), the roles decided from each connection's peer credentials,
// the one queue through which every request reaches the TPM, and the
// daemon's life cycle (Run). It knows nothing of systemd: readiness,
// watchdog and the listener are injected by cmd, which owns that edge.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/internal/ratelimit"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/tpm"
)

// Limits on requests. A sealed secret is at most agent.MaxSealInput (1 MiB);
// base64 and JSON bring it to under 1.5 MiB.
const (
	MaxRequestBody    = 4 << 20
	maxHeaderBytes    = 16 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	// drainTimeout is how long what a handler left of a body is read
	// after the handler's end (Handler).
	drainTimeout = 2 * time.Second
	// idleTimeout is no longer than readTimeout: a connection between
	// requests is held no longer than one a request is read on (review 54:
	// at 2 min, one cheap request kept a connection four times the bound
	// the threat model states).
	idleTimeout = readTimeout
	// opTimeout bounds an operation once it has the TPM; only the state
	// store's lock waits honour it (a TPM command has its own timeout).
	opTimeout = 10 * time.Minute
	// healthTimeout bounds the watchdog's TPM check, queue wait included;
	// it must stay below half of WatchdogSec (30 s in provd.service).
	healthTimeout = 10 * time.Second
	// stallTimeout is how long an operation may hold the queue without the
	// TPM answering a command before Health calls the daemon stuck: above
	// one TPM command's timeout (tpm.Options.Timeout, 2 min), which bounds
	// the longest single command (an RSA-4096 key generation on a discrete
	// TPM takes up to a minute), and above the store's lock wait.
	stallTimeout = 3 * time.Minute
	// Every audit record is an NV write in the TPM (the anchor's extend),
	// and a caller with no role makes one per refused request: a flood of
	// them wears the TPM's NV, which a TPM guards by refusing NV writes
	// for a while (TPM_RC_NV_RATE), and then the records of every caller's
	// operations fail with them; it also fills the trail (audit.MaxLogSize).
	// So refusals are recorded one by one refusalBurst at once, then
	// refusalRate a second; the rest are counted by caller, and the count
	// is written in a record of the daemon's own at most every
	// refusalCountEvery, and when the daemon stops. A flood of any length
	// from any number of callers then costs at most two NV writes a
	// minute.
	refusalBurst      = maxRefusals
	refusalRate       = 1.0 / 60
	refusalCountEvery = time.Minute
	// restTimeout is how long the daemon waits without a request before it
	// rests (restWhenIdle): between one and two of it after the last one.
	restTimeout = 5 * time.Second
)

// Input limits of the daemon, below what the in-process agent accepts: one
// request holds the TPM queue for every other client while it runs.
const (
	// MaxHMACInput bounds POST /v1/keys/hmac's data: beyond one TPM buffer
	// (1 KiB) every KiB is one more TPM2_SequenceUpdate, so 1 MiB is about
	// a thousand commands. The agent takes up to agent.MaxDataInput in-process.
	MaxHMACInput = 1 << 20
	// MaxSignDigest bounds POST /v1/keys/sign's digest: the largest hash
	// (SHA-512). The agent checks the exact size for the key's hash.
	MaxSignDigest = 64
)

// maxInput is the input limit of an operation, checked before the queue.
var maxInput = map[string]int{"key-hmac": MaxHMACInput, "key-sign": MaxSignDigest}

// Options build a Server.
type Options struct {
	// Agent performs the operations; TPM is its TPM, for the health check.
	Agent *agent.Agent
	TPM   *tpm.TPM
	Roles *Roles
	// RequestTimeout bounds a request's wait for the TPM queue (default
	// DefaultRequestTimeout); MaxWaiting bounds the waiting requests.
	RequestTimeout time.Duration
	MaxWaiting     int
	// EKCA is the PEM bundle first contact (provision, tpm identity) uses
	// when a request brings none (Config.EKCA).
	EKCA []byte
	// ExitCode is the CLI's exit code for an error, sent with every error
	// so that clients exit as the in-process CLI would. nil: api.ExitCode,
	// the kinds table's code.
	ExitCode func(error) int
	Logger   *slog.Logger
}

// Server serves the API. Its operations all run through one queue, so one
// Agent and one TPM connection serve every client.
type Server struct {
	ag       *agent.Agent
	t        *tpm.TPM
	log      *slog.Logger
	exitCode func(error) int
	q        *queue
	roles    atomic.Pointer[Roles]
	timeout  atomic.Int64 // time.Duration
	ekCA     atomic.Pointer[[]byte]
	hs       *http.Server
	mux      *http.ServeMux

	requests, refused, tpmCommands atomic.Int64
	// uncounted holds, by caller, the refusals not in the audit trail one
	// by one; countWriter is set while a goroutine writes their count.
	uncounted   refusalCounts
	countWriter atomic.Bool
	reads       readCache

	// Health's limits (healthTimeout, stallTimeout; tests shorten them) and
	// what it last saw of the TPM's progress.
	healthWait, stallAfter time.Duration
	progressMu             sync.Mutex
	lastCommands           int64
	lastProgress           time.Time

	// drainWait is drainTimeout (tests change it).
	drainWait time.Duration
	// restAfter is restTimeout (tests change it).
	restAfter time.Duration

	// oneByOne bounds the refusals recorded one by one, and countEvery
	// how often a count of the others is written (refusalRate,
	// refusalBurst, refusalCountEvery; tests change them); lastCount is
	// when the last count was written (nil: never), with the monotonic
	// clock's reading.
	oneByOne   *ratelimit.Limiter
	countEvery time.Duration
	lastCount  atomic.Pointer[time.Time]
}

// Stats counts what the server did.
type Stats struct {
	Requests    int64 // operations run (successful or not), refusals excluded
	Refused     int64 // requests refused for the caller's role
	TPMCommands int64 // TPM commands those operations sent
}

// New builds a Server; Serve starts it.
func New(o Options) (*Server, error) {
	if o.Agent == nil || o.TPM == nil || o.Roles == nil {
		return nil, errors.New("server: Agent, TPM and Roles are required")
	}
	return newServer(o), nil
}

// newServer builds the server from checked options (tests build one without
// a TPM for what is decided before the queue).
func newServer(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ExitCode == nil {
		o.ExitCode = api.ExitCode
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MaxWaiting <= 0 {
		o.MaxWaiting = DefaultMaxWaiting
	}
	s := &Server{ag: o.Agent, t: o.TPM, log: o.Logger, exitCode: o.ExitCode, q: newQueue(o.MaxWaiting), mux: http.NewServeMux(),
		healthWait: healthTimeout, stallAfter: stallTimeout, drainWait: drainTimeout, restAfter: restTimeout,
		oneByOne: ratelimit.New(refusalRate, refusalBurst, nil), countEvery: refusalCountEvery}
	s.Reconfigure(o.Roles, o.RequestTimeout, o.EKCA)
	s.routes()
	s.hs = &http.Server{
		Handler:           s.Handler(),
		ConnContext:       withCaller,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      o.RequestTimeout + opTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	return s
}

// Reconfigure swaps the role mapping, the request timeout and the default
// EK CA bundle (SIGHUP); requests already admitted keep the ones they
// started with.
func (s *Server) Reconfigure(roles *Roles, requestTimeout time.Duration, ekCA []byte) {
	s.roles.Store(roles)
	s.timeout.Store(int64(requestTimeout))
	s.ekCA.Store(&ekCA)
}

// withEKCA is req with the configured EK CA bundle when it brings none of
// its own: the request's bundle wins.
func (s *Server) withEKCA(req api.IdentityRequest) api.IdentityRequest {
	if len(req.EKCA) == 0 {
		req.EKCA = *s.ekCA.Load()
	}
	return req
}

// Serve accepts connections on ln until Shutdown; it returns nil then.
// It holds at most so many connections (limitedListener).
func (s *Server) Serve(ln net.Listener) error {
	busy, err := json.Marshal(api.NewErrorBody(errTooManyConns, s.exitCode))
	if err != nil {
		return err
	}
	err = s.hs.Serve(&limitedListener{Listener: ln, log: s.log, busy: busy,
		roleOf: func(c Caller) Role { return s.roles.Load().Of(c) }})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets in-flight requests finish (those waiting
// for the TPM included) and returns when they have, or at ctx's end.
func (s *Server) Shutdown(ctx context.Context) error { return s.hs.Shutdown(ctx) }

// Handler is the API's handler, for tests that serve it themselves.
//
// Every request's body is bounded here, MaxRequestBody for the handler's
// read and what follows it together, and what a handler left of a body of
// known length is read before the answer leaves: a refusal decided before
// the body was read (a role, a route) then reaches a client still writing
// it, where Go's server would close the connection under the client, which
// would see a broken pipe instead of the refusal. That read has 2 s from
// the handler's end (drainTimeout), whatever the handler took: a refusal
// that waited for the TPM queue to audit it would otherwise find the
// request's read deadline past. After an Expect (Go answers 417 to any
// but 100-continue before a handler runs) the answer leaves first: its
// client may be waiting for a 100 Continue that a refusal does not send,
// or may send its body without waiting. A chunked body is not read after
// its handler: its framing costs the wire more than its bytes, so Go's own
// bound applies (256 KiB, then the connection closes). Found by three
// reviews: the drain read 4 MiB more after a body over the bound, held an
// Expect refusal for the 30 s read timeout, broke clients that send after
// an Expect without waiting, read 17 times the bound in 1-byte chunks with
// extensions, and broke a refusal that waited on the queue past the read
// deadline.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A copy: Go's server decides what to do with the rest of the body
		// by the type of the request's own Body.
		rb := r.WithContext(r.Context())
		rb.Body = http.MaxBytesReader(w, r.Body, MaxRequestBody)
		s.mux.ServeHTTP(w, rb)
		if r.ContentLength <= 0 {
			return
		}
		rc := http.NewResponseController(w)
		if r.ProtoAtLeast(1, 1) && r.Header.Get("Expect") != "" {
			_ = rc.Flush()
		}
		_ = rc.SetReadDeadline(time.Now().Add(s.drainWait))
		_, _ = io.Copy(io.Discard, rb.Body)
	})
}

// ConnContext is the http.Server hook that attaches the peer credentials; a
// test serving Handler on its own http.Server sets it too.
func ConnContext(ctx context.Context, c net.Conn) context.Context { return withCaller(ctx, c) }

// Stats reports the counters so far.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.requests.Load(), Refused: s.refused.Load(), TPMCommands: s.tpmCommands.Load()}
}

// Health tells the watchdog whether the daemon serves. It sends one
// TPM2_PCR_Read through the queue, the cheapest command that exercises the
// whole path, and waits at most healthTimeout for it. When the queue does
// not reach it in time, admitted operations hold the TPM, and some rightly
// hold it long: a 1 MiB HMAC is a thousand TPM commands, an RSA-4096 key
// generation on a discrete TPM one command of up to a minute, a store lock
// wait seconds. The daemon is healthy then while they make progress: the
// TPM answered a command since the previous check, or the operation holding
// the queue was admitted less than stallTimeout ago. Only a queue held for
// stallTimeout with no TPM answer stops the pings.
func (s *Server) Health(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, s.healthWait)
	defer cancel()
	err := s.q.do(hctx, daemonOwn, func() error {
		_, err := s.t.PCRUpdateCounter()
		return err
	})
	if !errors.Is(err, api.ErrBusy) {
		if err == nil {
			s.sawProgress()
		}
		return err
	}
	return s.progressing()
}

// restWhenIdle has the agent rest (agent.Agent.Rest: the sessions it keeps
// between requests ended) once a tick of restAfter passed in which the
// daemon sent the TPM no command, until ctx ends. Run starts it behind a
// resource manager only: there a session the daemon keeps waits, while its
// connection sends nothing, as a saved context (the manager loads and
// saves again every session of a connection around each of its commands),
// and a TPM refuses to save any session's context once the number of
// contexts saved after the oldest one reaches its context gap
// (TPM_PT_CONTEXT_GAP_MAX: 65,535 on swtpm, at least that on any TPM);
// Linux's resource manager does not refresh an old context, and fails the
// command of whichever client it was saving for. An idle daemon's kept
// sessions were the oldest, for as long as it stayed idle: other clients'
// work would, after 65,535 session saves, have failed until its next
// command. Idleness is the TPM's command count, not the requests served
// (found by review 13: a refused request's audit record kept a session no
// counted request followed, and requests that send the TPM nothing, a
// key's public part, kept the daemon from resting while its sessions aged).
// Resting holds nothing saved longer than two restAfter past the daemon's
// last command; on /dev/tpm0, which the daemon holds alone, nothing is
// saved.
func (s *Server) restWhenIdle(ctx context.Context) {
	tick := time.NewTicker(s.restAfter)
	defer tick.Stop()
	var r rester
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.restIfIdle(&r)
	}
}

// rester is what restWhenIdle saw at its last tick.
type rester struct {
	seen, restedAt int64 // the TPM's command count then, and after the last rest
	rested         bool
}

// restIfIdle rests when the daemon sent the TPM no command since the
// previous tick, nor since its last rest, and the queue is free: the rest
// never takes a client's place in it (found by review 13: queued behind a
// long operation it counted against MaxWaiting and turned a client away);
// a busy queue sends commands, and the next idle tick rests.
func (s *Server) restIfIdle(r *rester) {
	n := s.t.Stats().Commands
	idle := n == r.seen
	r.seen = n
	if !idle || (r.rested && r.restedAt == n) {
		return
	}
	ran, err := s.q.tryDo(s.ag.Rest)
	if !ran {
		return
	}
	if err != nil {
		s.log.Debug("rest: the kept sessions were not all ended", "err", err)
	}
	n = s.t.Stats().Commands // the rest's own flushes are no activity
	r.seen, r.restedAt, r.rested = n, n, true
}

// sawProgress notes the TPM's command count as seen now.
func (s *Server) sawProgress() {
	s.progressMu.Lock()
	defer s.progressMu.Unlock()
	s.lastCommands, s.lastProgress = s.t.Stats().Commands, time.Now()
}

// progressing decides Health when the queue did not reach its probe.
func (s *Server) progressing() error {
	now := time.Now()
	cmds := s.t.Stats().Commands
	s.progressMu.Lock()
	defer s.progressMu.Unlock()
	if cmds != s.lastCommands {
		s.lastCommands, s.lastProgress = cmds, now
		s.log.Debug("watchdog: the TPM queue is held by operations that make progress")
		return nil
	}
	since, held := s.q.heldSince()
	if !held {
		return nil // between two operations: the queue moves
	}
	last := since
	if s.lastProgress.After(last) {
		last = s.lastProgress
	}
	if idle := now.Sub(last); idle >= s.stallAfter {
		return fmt.Errorf("%w: an operation has held the TPM queue for %v, and the TPM has answered no command for %v",
			api.ErrBusy, now.Sub(since).Round(time.Second), idle.Round(time.Second))
	}
	return nil
}

// endpoint is one route of the API (api.Route) with the roles that may call
// it; docs/api.md documents each.
type endpoint struct {
	api.Route
	Role Role
}

// Endpoints lists the API's routes and who may call them.
var Endpoints = []endpoint{
	{api.RouteStatus, RoleAny},
	{api.RouteTPMInfo, RoleAny},
	{api.RouteTPMIdentity, RoleAny},
	{api.RoutePolicyShow, RoleAny},
	{api.RouteAuditVerify, RoleAny},
	{api.RouteAuditShow, RoleOfficer},
	{api.RouteProvision, RoleOfficer},
	{api.RoutePolicyInstall, RoleOfficer},
	{api.RouteZeroize, RoleOfficer},
	{api.RouteAuditRepair, RoleOfficer},
	{api.RouteAuditReanchor, RoleOfficer},
	{api.RouteSeal, RoleUser},
	{api.RouteUnseal, RoleUser},
	{api.RouteKeyDerive, RoleOfficer},
	{api.RouteKeyCreate, RoleOfficer},
	{api.RouteKeyDelete, RoleOfficer},
	{api.RouteKeyExportBlob, RoleOfficer},
	{api.RouteKeyImportBlob, RoleOfficer},
	{api.RouteKEKImport, RoleOfficer},
	{api.RouteKeyExport, RoleOfficer},
	{api.RouteKeyImport, RoleOfficer},
	{api.RoutePeerIdentity, RoleOfficer},
	{api.RouteDupExport, RoleOfficer},
	{api.RouteDupImport, RoleOfficer},
	{api.RoutePeerProve, RoleOfficer},
	{api.RoutePKExport, RoleOfficer},
	{api.RouteProvisionFrom, RoleOfficer},
	{api.RouteAttestIdentity, RoleOfficer},
	{api.RouteAttestActivate, RoleOfficer},
	{api.RouteAttestQuote, RoleOfficer},
	{api.RouteAttestInstall, RoleOfficer},
	{api.RouteAttestSecret, RoleUser},
	{api.RouteAttestRecord, RoleOfficer},
	{api.RouteAttestSign, RoleUser},
	{api.RouteKeyList, RoleUser},
	{api.RouteKeyPublic, RoleUser},
	{api.RouteKeySign, RoleUser},
	{api.RouteKeyHMAC, RoleUser},
	{api.RouteKeyECDH, RoleUser},
	{api.RouteKeyDecrypt, RoleUser},
	{api.RouteKeyEncrypt, RoleUser},
	{api.RouteKeyDecryptData, RoleUser},
}

func (s *Server) routes() {
	for _, ep := range Endpoints {
		var h http.HandlerFunc
		switch ep.Op {
		case "status":
			h = handle(s, ep, func(ctx context.Context, _ empty) (api.Status, error) { return s.ag.Status(ctx) })
		case "tpm-info":
			h = handle(s, ep, func(ctx context.Context, _ empty) (api.TPMInfo, error) { return s.ag.TPMInfo(ctx) })
		case "tpm-identity":
			h = handle(s, ep, func(ctx context.Context, req api.IdentityRequest) (api.Identity, error) {
				return s.ag.TPMIdentity(ctx, s.withEKCA(req))
			})
		case "policy-show":
			h = handle(s, ep, func(ctx context.Context, _ empty) (api.PolicyState, error) { return s.ag.ShowPolicy(ctx) })
		case "audit-verify":
			h = handle(s, ep, func(ctx context.Context, _ empty) (audit.Report, error) { return s.ag.AuditVerify(ctx) })
		case "audit-reanchor":
			h = handle(s, ep, func(ctx context.Context, _ empty) (api.AuditReanchorResult, error) { return s.ag.AuditReanchor(ctx) })
		case "audit-show":
			h = handle(s, ep, func(ctx context.Context, _ empty) ([]audit.Record, error) { return s.ag.AuditRecords(ctx) })
		case "provision":
			h = handle(s, ep, func(ctx context.Context, req api.ProvisionRequest) (api.ProvisionResult, error) {
				req.EKCA = s.withEKCA(req.Identity()).EKCA
				return s.ag.Provision(ctx, req)
			})
		case "policy-install":
			h = handle(s, ep, func(ctx context.Context, w api.PolicyInstallRequest) (api.PolicyInstallResult, error) {
				return s.ag.InstallPolicy(ctx, w.Policy)
			})
		case "zeroize":
			h = handle(s, ep, s.ag.Zeroize)
		case "seal":
			h = handle(s, ep, func(ctx context.Context, req api.SealRequest) (api.SealResponse, error) {
				blob, err := s.ag.Seal(ctx, req)
				return api.SealResponse{Blob: blob}, err
			})
		case "unseal":
			h = handle(s, ep, func(ctx context.Context, w api.UnsealRequest) (api.UnsealResponse, error) {
				secret, err := s.ag.Unseal(ctx, w.Blob)
				return api.UnsealResponse{Secret: secret}, err
			})
		default:
			if h = s.keyHandler(ep); h == nil {
				panic("server: no handler for " + ep.Op)
			}
		}
		s.mux.Handle(ep.Method+" "+ep.Path, h)
	}
	allow := allowedMethods()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if methods, ok := allow[r.URL.Path]; ok {
			w.Header().Set("Allow", methods)
			s.writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%w: %s %s: the endpoint takes %s", api.ErrBadInput, r.Method, r.URL.Path, methods))
			return
		}
		s.writeError(w, http.StatusNotFound, fmt.Errorf("%w: no API endpoint %s %s", api.ErrNotFound, r.Method, r.URL.Path))
	})
}

// allowedMethods maps each endpoint's path to its Allow header: a known
// path asked with another method is 405, not 404. The mux serves HEAD
// wherever it serves GET.
func allowedMethods() map[string]string {
	m := map[string][]string{}
	for _, ep := range Endpoints {
		m[ep.Path] = append(m[ep.Path], ep.Method)
		if ep.Method == http.MethodGet {
			m[ep.Path] = append(m[ep.Path], http.MethodHead)
		}
	}
	allow := make(map[string]string, len(m))
	for p, methods := range m {
		slices.Sort(methods)
		allow[p] = strings.Join(methods, ", ")
	}
	return allow
}

// empty is the request of a GET: no body.
type empty struct{}

// wiper is a request or response that holds secret bytes to clear after use.
type wiper interface{ Wipe() }

// keyNameOf is the key a request names, for the log's key_name field.
func keyNameOf(req any) (string, bool) {
	switch r := req.(type) {
	case api.KeyName:
		return r.Name, true
	case api.DeriveRequest:
		return r.Name, true
	case api.CreateRequest:
		return r.Name, true
	case api.SignRequest:
		return r.Name, true
	case api.DataRequest:
		return r.Name, true
	case api.ECDHRequest:
		return r.Name, true
	case api.DecryptRequest:
		return r.Name, true
	case api.ImportBlobRequest:
		return r.Name, true
	}
	return "", false
}

// inputLen is the size of the input maxInput bounds, for the requests it
// bounds.
func inputLen(req any) (int, bool) {
	switch r := req.(type) {
	case api.DataRequest:
		return len(r.Data), true
	case api.SignRequest:
		return len(r.Digest), true
	}
	return 0, false
}

// handle is one endpoint: check the caller's role (refusals are audited),
// decode the body strictly, wait for the queue, run call, answer JSON.
func handle[Req, Res any](s *Server, ep endpoint, call func(context.Context, Req) (Res, error)) http.HandlerFunc {
	return handleChecked(s, ep, func(ctx context.Context, req Req) (Res, func(*Res) error, error) {
		res, err := call(ctx, req)
		return res, nil, err
	})
}

// handleChecked is handle for an operation whose answer the host finishes
// in software once the TPM's part is done (a signature, encoded and
// checked against the key's public area): call returns check with its
// result, and check, which completes the result and may refuse it, runs
// once the request has left the queue, so that the TPM serves the next
// request meanwhile. A result whose check fails is never answered. Not for
// the operations readCache keeps (they are kept before check).
func handleChecked[Req, Res any](s *Server, ep endpoint, call func(context.Context, Req) (Res, func(*Res) error, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c, cerr := callerFrom(r.Context())
		if cerr != nil {
			s.refuse(w, ep, Caller{UID: -1, GID: -1}, 0, cerr.Error())
			return
		}
		have := s.roles.Load().Of(c)
		if have&ep.Role == 0 {
			s.refuse(w, ep, c, have, "")
			return
		}
		var req Req
		if wp, ok := any(&req).(wiper); ok {
			defer wp.Wipe()
		}
		// One read for every endpoint, those that take no body included
		// (Handler bounds it): a body too large for them is 413 as
		// everywhere.
		body, rerr := io.ReadAll(r.Body)
		defer clear(body)
		if rerr != nil {
			status := http.StatusBadRequest
			var mbe *http.MaxBytesError
			if errors.As(rerr, &mbe) {
				status = http.StatusRequestEntityTooLarge
			}
			s.writeError(w, status, fmt.Errorf("%w: request body: %v", api.ErrBadInput, rerr))
			return
		}
		if _, isEmpty := any(req).(empty); isEmpty {
			// An endpoint that takes no body takes none: a body there is a
			// client's mistake or a probe, never ignored (found by the flood
			// test: garbage posted to audit/reanchor re-anchored the trail).
			if len(body) > 0 {
				s.writeError(w, http.StatusBadRequest, fmt.Errorf("%w: %s takes no request body", api.ErrBadInput, ep.Op))
				return
			}
		} else if err := strictjson.Decode(body, &req); err != nil {
			s.writeError(w, http.StatusBadRequest, fmt.Errorf("%w: request body: %v", api.ErrBadInput, err))
			return
		}
		if limit, ok := maxInput[ep.Op]; ok {
			if n, ok := inputLen(req); ok && n > limit {
				s.writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("%w: %s input of %d bytes; the daemon takes at most %d",
					api.ErrBadInput, ep.Op, n, limit))
				return
			}
		}

		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(s.timeout.Load()))
		defer cancel()
		var res Res
		var check func(*Res) error
		var cmds int64
		ran, cached := false, false
		if v, ok := s.reads.get(ep.Op); ok {
			res, cached = v.(Res), true
		}
		var err error
		if !cached {
			err = s.q.do(ctx, clientOf(c.UID), func() error {
				if v, ok := s.reads.get(ep.Op); ok { // answered while this one waited
					res, cached = v.(Res), true
					return nil
				}
				ran = true
				s.reads.running(ep.Op)
				// Admitted: the operation runs to its end even if the client
				// goes away, so that it is whole in the state and the audit trail.
				octx, ocancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
				defer ocancel()
				octx = api.WithCaller(octx, api.Caller{UID: c.UID})
				before := s.t.Stats().Commands
				var err error
				res, err = recovered(s, octx, ep.Op, func() (res Res, err error) {
					res, check, err = call(octx, req)
					return res, err
				})
				cmds = s.t.Stats().Commands - before
				if err == nil {
					s.reads.put(ep.Op, res)
				}
				return err
			})
		}
		if err == nil && check != nil {
			// Out of the queue: the host's work alone.
			_, err = recovered(s, ctx, ep.Op, func() (struct{}, error) { return struct{}{}, check(&res) })
			if err != nil {
				var zero Res
				res = zero
			}
		}
		if wp, ok := any(&res).(wiper); ok {
			defer wp.Wipe()
		}
		if ran {
			s.requests.Add(1)
			s.tpmCommands.Add(cmds)
		}
		level := slog.LevelDebug
		if ep.Role == RoleOfficer {
			level = slog.LevelInfo // life-cycle operations are worth a line
		}
		attrs := []slog.Attr{
			slog.String("operation", ep.Op), slog.Int("caller_uid", c.UID), slog.Int("caller_pid", c.PID),
			slog.Duration("duration", time.Since(start)), slog.Int64("tpm_commands", cmds),
		}
		if name, ok := keyNameOf(req); ok {
			attrs = append(attrs, slog.String("key_name", name))
		}
		if cached {
			attrs = append(attrs, slog.Bool("cached", true))
		}
		if err != nil {
			attrs = append(attrs, slog.Any("error_kinds", api.ErrorKinds(err)), slog.String("error", err.Error()))
			s.log.LogAttrs(r.Context(), max(level, slog.LevelInfo), "request failed", attrs...)
			s.writeError(w, 0, err)
			return
		}
		s.log.LogAttrs(r.Context(), level, "request", attrs...)
		s.writeJSON(w, http.StatusOK, res)
	}
}

// recovered runs call; a panic in it (a bug: no input may reach one) is
// logged with its stack, written to the audit trail, and answered as an
// internal error (500), so that one request cannot take the daemon down and
// the trail shows what did not complete. The agent's lock is released by its
// deferred unlock as the panic unwinds.
func recovered[Res any](s *Server, ctx context.Context, op string, call func() (Res, error)) (res Res, err error) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		s.log.Error("request panicked", "operation", op, "panic", p, "stack", string(debug.Stack()))
		err = fmt.Errorf("internal error in %s: a bug, reported in the daemon's log and the audit trail", op)
		if aerr := s.ag.RecordFault(ctx, op, fmt.Sprint(p)); aerr != nil {
			s.log.Error("fault not audited", "operation", op, "err", aerr)
		}
	}()
	return call()
}

// writeRefusalCount writes the refusals counted and not recorded one by
// one (refuse) at the queue's turn, at most one count every countEvery,
// until none is left, the queue closes or ctx ends; a count it could not
// write is kept for the next call. Run writes what is left once more when
// it closes the queue (recordRefusalCount).
func (s *Server) writeRefusalCount(ctx context.Context) error {
	for s.uncounted.any() {
		if last := s.lastCount.Load(); last != nil {
			// Never longer than countEvery (review 73: timed by the wall
			// clock, a step back of an hour held every count for the
			// hour, past the writer's deadline, in memory only).
			if wait := min(time.Until(last.Add(s.countEvery)), s.countEvery); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-s.q.stopping:
					t.Stop()
					return errStopping // the stop writes what is left, or the journal has it (countRefusal)
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				}
			}
		}
		// The daemon's own turn: never refused for the refusals' bound,
		// which is what put them here.
		if err := s.q.do(ctx, daemonOwn, func() error { return s.recordRefusalCount(ctx) }); err != nil {
			return err
		}
	}
	return nil
}

// recordRefusalCount writes the refusals counted, by caller, in a record of
// the daemon's own (op "refusals"), its caller holding the queue; a count
// it could not write is kept.
func (s *Server) recordRefusalCount(ctx context.Context) error {
	counts := s.uncounted.take()
	if len(counts) == 0 {
		return nil
	}
	now := time.Now()
	s.lastCount.Store(&now)
	why := fmt.Sprintf("refusals not recorded one by one (%s): past the rate at which the daemon records refusals one by one, or more waited to be recorded than it lets wait, or their records waited past the request timeout", counts)
	err := s.ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: os.Getuid()}), "refusals", why)
	if err != nil {
		s.uncounted.addAll(counts)
	}
	return err
}

// refuse answers 403 and writes the refusal to the audit trail.
func (s *Server) refuse(w http.ResponseWriter, ep endpoint, c Caller, have Role, why string) {
	s.refused.Add(1)
	if why == "" {
		why = fmt.Sprintf("%s needs the %s role; %s holds %s", ep.Op, ep.Role, c, have)
	}
	s.log.Warn("request refused", "operation", ep.Op, "caller_uid", c.UID, "caller_pid", c.PID, "reason", why)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.timeout.Load()))
	defer cancel()
	// The record waits among refusals' records only, never in a client's
	// place (review 54); past maxRefusals of them, or past the request
	// timeout, it is not written, and its caller is counted: the count is
	// written in a record of its own at the queue's next turn (review 55:
	// counted only in memory, it reached the trail with a later refusal,
	// if one came before the daemon stopped).
	// Past the rate of refusals recorded one by one (refusalRate), it is
	// counted at once.
	if !s.oneByOne.Allow("") {
		s.countRefusal(c.UID)
	} else if err := s.q.do(ctx, refusalRecord, func() error {
		s.reads.running(ep.Op + " (refused)") // an audit line: status shows the trail's length
		return s.ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: c.UID}), ep.Op, why)
	}); err != nil {
		s.log.Error("refusal not audited one by one: counted", "operation", ep.Op, "caller_uid", c.UID, "err", err)
		s.countRefusal(c.UID)
	}
	s.writeError(w, http.StatusForbidden, fmt.Errorf("%w: %s", api.ErrRefused, why))
}

// journalUncounted puts the refusals still counted in memory, once the
// stop's last count is written and the trail takes no more, in the
// journal, by caller; whoever takes them first logs them.
func (s *Server) journalUncounted() {
	if c := s.uncounted.take(); len(c) > 0 {
		s.log.Error("refusal count not audited: the daemon stopped", "refusals", c.String())
	}
}

// countRefusal counts a refusal of the caller uid not recorded one by one,
// and starts the count's writer unless one runs. A writer that ends as a
// refusal is counted looks once more, so that no count waits for the next
// refusal or the stop.
func (s *Server) countRefusal(uid int) {
	s.uncounted.add(uid, 1)
	if !s.countWriter.CompareAndSwap(false, true) {
		return
	}
	go func() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			err := s.writeRefusalCount(ctx)
			cancel()
			switch {
			case errors.Is(err, errStopping):
				// Before the stop's last count, that count takes them
				// (Run's lastCount, after the operation it waits for:
				// reviews 55, 56); after it, the trail takes nothing
				// more, and the journal has them (below).
			case err != nil:
				s.log.Error("refusal count not audited: kept for the next", "err", err)
			}
			s.countWriter.Store(false)
			if s.q.lastRan.Load() {
				// Counted after the stop's last count (reviews 73, 76:
				// they stayed in memory, unlogged).
				s.journalUncounted()
				return
			}
			if err != nil || s.q.closed.Load() || !s.uncounted.any() || !s.countWriter.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// writeError answers err with its kinds, exit code and policy details.
// status 0 derives the HTTP status from the kinds (api.HTTPStatus).
func (s *Server) writeError(w http.ResponseWriter, status int, err error) {
	body := api.NewErrorBody(err, s.exitCode)
	if status == 0 {
		status = api.HTTPStatus(body.Error.Kinds)
	}
	s.writeJSON(w, status, body)
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encoding response", "err", err)
		http.Error(w, `{"error":{"message":"encoding response","kinds":[],"exit_code":1}}`, http.StatusInternalServerError)
		return
	}
	defer clear(b) // it may hold a secret, base64
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
