package fleet

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/internal/ratelimit"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/policy"
)

// Operators authenticate with bearer tokens (docs/attestation.md): the
// server keeps only their SHA-256. Devices never present one: they
// authenticate through their AK (enrollment by EK, attestations by quote).

// TokenHash is what a server keeps of an operator token.
func TokenHash(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// Server is the endpoint's HTTP API.
type Server struct {
	E *Endpoint
	// Operators are the SHA-256 of the operator tokens; none: no operator
	// endpoint answers.
	Operators [][32]byte
	Log       *slog.Logger
	// Metrics, made by Handler when nil.
	Metrics *Metrics

	perDevice, perClient *ratelimit.Limiter
	ui                   sessions
}

// Rate limits, per replica: a device's challenges, attestations and
// activation (by its ID), and enrollments (by the client's address).
const (
	DeviceRate, DeviceBurst = 1.0, 20.0
	ClientRate, ClientBurst = 1.0, 10.0
)

// Handler routes the API.
func (s *Server) Handler() http.Handler {
	if s.Metrics == nil {
		s.Metrics = NewMetrics()
	}
	s.perDevice = ratelimit.New(DeviceRate, DeviceBurst, s.E.cfg.Now)
	s.perClient = ratelimit.New(ClientRate, ClientBurst, s.E.cfg.Now)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.Metrics.Handler())
	s.uiRoutes(mux)
	mux.HandleFunc("POST /v1/enroll", device(s, s.E.Enroll))
	mux.HandleFunc("POST /v1/activate", device(s, s.E.Activate))
	mux.HandleFunc("POST /v1/challenge", device(s, s.E.Challenge))
	mux.HandleFunc("POST /v1/attest", device(s, s.E.Attest))
	mux.HandleFunc("POST /v1/attest/peer", device(s, s.E.ProvePeer))
	mux.HandleFunc("GET /v1/authority", func(w http.ResponseWriter, _ *http.Request) {
		pemKey, err := s.E.AuthorityPEM()
		if err != nil {
			writeError(w, http.StatusNotFound, "not_found", err)
			return
		}
		writeJSON(w, http.StatusOK, fleetapi.Authority{PublicKey: pemKey})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.E.cfg.Store.Policy(r.Context(), "readyz-probe"); err != nil && !errors.Is(err, ErrNotFound) {
			if s.Log != nil {
				s.Log.Error("readyz: store", "err", err)
			}
			writeError(w, http.StatusServiceUnavailable, "store", errors.New("the store does not answer"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /v1/devices", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		ds, err := s.E.cfg.Store.Devices(r.Context(), r.URL.Query().Get("after"), limit)
		out := []fleetapi.Device{}
		for _, d := range ds {
			out = append(out, deviceView(d))
		}
		return out, err
	}))
	mux.HandleFunc("GET /v1/devices/{id}", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		d, err := s.E.cfg.Store.Device(r.Context(), r.PathValue("id"))
		return deviceView(d), err
	}))
	mux.HandleFunc("GET /v1/devices/{id}/appraisals", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		as, err := s.E.cfg.Store.Appraisals(r.Context(), r.PathValue("id"), 100)
		out := []fleetapi.Verdict{}
		for _, a := range as {
			out = append(out, fleetapi.Verdict{AppraisalID: a.ID, DeviceID: a.DeviceID, Pass: a.Pass, Reasons: a.Reasons, At: a.At})
		}
		return out, err
	}))
	mux.HandleFunc("POST /v1/devices/{id}/revoke", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		if err := s.E.cfg.Store.Revoke(r.Context(), r.PathValue("id"), s.E.now()); err != nil {
			return nil, err
		}
		d, err := s.E.cfg.Store.Device(r.Context(), r.PathValue("id"))
		return deviceView(d), err
	}))
	mux.HandleFunc("POST /v1/devices/{id}/dup-approval", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		var in fleetapi.DupApprovalRequest
		if err := decode(r, &in); err != nil {
			return nil, rejected("%v", err)
		}
		return s.E.ApproveDuplication(r.Context(), r.PathValue("id"), in)
	}))
	mux.HandleFunc("GET /v1/policies/{class}", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		p, err := s.E.cfg.Store.Policy(r.Context(), r.PathValue("class"))
		return policyView(p), err
	}))
	mux.HandleFunc("PUT /v1/policies/{class}", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		var in fleetapi.Policy
		if err := decode(r, &in); err != nil {
			return nil, err
		}
		if in.Class != r.PathValue("class") {
			return nil, rejected("the body's class %q is not the path's %q", in.Class, r.PathValue("class"))
		}
		p, err := policyFrom(in)
		if err != nil {
			return nil, err
		}
		p.UpdatedAt = s.E.now()
		// Every change a new version, later than the last (found by
		// review: two changes in one millisecond, or one from a replica
		// whose clock runs behind, looked like no change to what binds
		// the policy's version).
		if cur, err := s.E.cfg.Store.Policy(r.Context(), p.Class); err == nil && !p.UpdatedAt.After(cur.UpdatedAt) {
			p.UpdatedAt = cur.UpdatedAt.Add(time.Millisecond)
		} else if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if err := s.E.cfg.Store.SetPolicy(r.Context(), p); err != nil {
			return nil, err
		}
		return policyView(p), nil
	}))
	mux.HandleFunc("PUT /v1/secrets/{class}/{name}", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		var in fleetapi.SecretRequest
		if err := decode(r, &in); err != nil {
			return nil, err
		}
		sec := Secret{Class: r.PathValue("class"), Name: r.PathValue("name"), Kind: in.Kind, Value: in.Value, UpdatedAt: s.E.now()}
		defer clear(in.Value)
		if err := checkClass(sec.Class); err != nil {
			return nil, err
		}
		if err := fleetapi.CheckSecretName(sec.Name); err != nil {
			return nil, rejected("%v", err)
		}
		switch sec.Kind {
		case "", fleetapi.KindSecret:
			sec.Kind = fleetapi.KindSecret
			if len(sec.Value) == 0 || len(sec.Value) > MaxSecret {
				return nil, rejected("a secret of %d bytes, want 1..%d", len(sec.Value), MaxSecret)
			}
		case fleetapi.KindKey:
			if len(sec.Value) > MaxKey {
				return nil, rejected("a key of %d bytes, at most %d", len(sec.Value), MaxKey)
			}
			if _, err := ParseDeliveryKey(sec.Value); err != nil {
				return nil, err
			}
		default:
			return nil, rejected("kind %q, want secret or key", sec.Kind)
		}
		if err := s.E.cfg.Store.PutSecret(r.Context(), sec); err != nil {
			return nil, err
		}
		return secretInfo(sec), nil
	}))
	mux.HandleFunc("DELETE /v1/secrets/{class}/{name}", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		if err := s.E.cfg.Store.DeleteSecret(r.Context(), r.PathValue("class"), r.PathValue("name")); err != nil {
			return nil, err
		}
		return map[string]string{"class": r.PathValue("class"), "name": r.PathValue("name"), "deleted": "true"}, nil
	}))
	mux.HandleFunc("GET /v1/secrets/{class}", s.operator(func(w http.ResponseWriter, r *http.Request) (any, error) {
		secs, err := s.E.cfg.Store.Secrets(r.Context(), r.PathValue("class"))
		out := []fleetapi.SecretInfo{}
		for _, sec := range secs {
			out = append(out, secretInfo(sec))
			clear(sec.Value)
		}
		return out, err
	}))
	return s.logged(mux)
}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// logged logs one structured line per request: the route pattern (never
// the path, which may hold a device ID), the status and the duration;
// never a body, a token or a header.
func (s *Server) logged(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		mux.ServeHTTP(sw, r)
		if s.Log != nil {
			_, pattern := mux.Handler(r)
			s.Log.Info("request", "route", pattern, "status", sw.status, "duration", time.Since(start))
		}
	})
}

// policyFrom checks an operator's policy: a valid class, approved banks,
// PCR indices 0..23 with values of the bank's size, manifest digests of 32
// bytes in lower-case hex.
func policyFrom(in fleetapi.Policy) (Policy, error) {
	p := Policy{Class: in.Class, PCRs: map[string]map[int]string{}, Manifests: in.Manifests}
	if err := checkClass(in.Class); err != nil {
		return p, err
	}
	for bank, vals := range in.PCRs {
		b, err := policy.ParseBank(bank)
		if err != nil {
			return p, rejected("%v", err)
		}
		p.PCRs[b.String()] = map[int]string{}
		for k, v := range vals {
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i > 23 || len(v) != 2*b.Hash().Size() || strings.ToLower(v) != v || !isHex(v) {
				return p, rejected("PCR %q of bank %s: %q", k, bank, v)
			}
			p.PCRs[b.String()][i] = v
		}
	}
	for _, m := range in.Manifests {
		if len(m) != 64 || strings.ToLower(m) != m || !isHex(m) {
			return p, rejected("manifest digest %q: want 64 lower-case hex digits (fw manifest show's manifest_sha256)", m)
		}
	}
	for _, d := range in.PKPolicies {
		if len(d) != 64 || strings.ToLower(d) != d || !isHex(d) || d == strings.Repeat("0", 64) {
			return p, rejected("PK policy digest %q: want 64 lower-case hex digits, not zeros (provd status's policy_digest)", d)
		}
		if d == authValueOnly {
			return p, rejected("PK policy digest %q is PolicyAuthValue's alone: it checks no platform state (copy policy_digest from provd status on a known-good device, never a device's claim)", d)
		}
	}
	p.PKPolicies = in.PKPolicies
	return p, nil
}

func isHex(s string) bool {
	return strings.Trim(s, "0123456789abcdef") == ""
}

func policyView(p Policy) fleetapi.Policy {
	out := fleetapi.Policy{Class: p.Class, PCRs: map[string]map[string]string{}, Manifests: p.Manifests, PKPolicies: p.PKPolicies, TOFU: p.TOFU, UpdatedAt: p.UpdatedAt}
	for bank, vals := range p.PCRs {
		out.PCRs[bank] = map[string]string{}
		for i, v := range vals {
			out.PCRs[bank][strconv.Itoa(i)] = v
		}
	}
	return out
}

// device serves one of the devices' endpoints: no operator credential, the
// body read strictly and bounded.
func device[Req, Res any](s *Server, fn func(context.Context, Req) (Res, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := decode(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", err)
			return
		}
		ctx := r.Context()
		route, key := "enroll", clientAddr(r)
		switch v := any(&req).(type) {
		case *fleetapi.ChallengeRequest:
			route, key = "challenge", v.DeviceID
		case *fleetapi.AttestRequest:
			route, key = "attest", v.DeviceID
		case *fleetapi.ActivateRequest:
			route, key = "activate", v.DeviceID
		case *fleetapi.PeerProveRequest:
			route, key = "peer", v.DeviceID
		}
		lim := s.perDevice
		if route == "enroll" {
			lim = s.perClient
		} else {
			// A device ID is 64 lower-case hex digits; anything else is
			// refused before it costs memory (found by review: megabyte
			// IDs filled the limiter). The bucket is the device's from this
			// client: someone else's junk requests under a device's ID do
			// not lock the device out (found by review).
			if !isDeviceID(key) {
				writeError(w, http.StatusBadRequest, "bad_request", errors.New("device_id: want 64 lower-case hex digits"))
				return
			}
			// A bucket only for a device the store knows (found by
			// review: random IDs filled the limiter, which then refused
			// every device).
			d, p, err := s.E.cfg.Store.DeviceWithPolicy(r.Context(), key)
			if errors.Is(err, ErrNotFound) {
				writeError(w, http.StatusNotFound, "not_found", errors.New("no such device"))
				return
			} else if err != nil {
				s.fail(w, r, err)
				return
			}
			// The endpoint reads nothing more (one indexed read per
			// appraisal).
			ctx = WithDevice(ctx, d, p)
			key += "/" + clientAddr(r)
		}
		if !lim.Allow(route + "/" + key) {
			s.Metrics.limited.WithLabelValues(route).Inc()
			writeError(w, http.StatusTooManyRequests, "rate_limited", fmt.Errorf("too many %s requests; retry later", route))
			return
		}
		start := time.Now()
		res, err := fn(ctx, req)
		s.count(route, any(res), err, time.Since(start))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

// count updates the metrics for one device request.
func (s *Server) count(route string, res any, err error, took time.Duration) {
	switch route {
	case "enroll":
		result := "pending"
		if err != nil {
			result = "rejected"
		}
		s.Metrics.enrollments.WithLabelValues(result).Inc()
	case "activate":
		if err == nil {
			s.Metrics.enrollments.WithLabelValues("enrolled").Inc()
		}
	case "attest":
		v, ok := res.(fleetapi.Verdict)
		if err != nil || !ok {
			return
		}
		result, reason := "pass", "none"
		if !v.Pass {
			result = "fail"
		}
		if len(v.Reasons) > 0 {
			reason = v.Reasons[0].Code
		}
		s.Metrics.appraisals.WithLabelValues(result, reason).Inc()
		s.Metrics.latency.Observe(took.Seconds())
	}
}

func isDeviceID(s string) bool { return len(s) == 64 && isHex(s) }

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// operator serves an operator endpoint: a valid bearer token first, or 401
// and nothing else is looked at.
func (s *Server) operator(fn func(http.ResponseWriter, *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="provd fleet"`)
			writeError(w, http.StatusUnauthorized, "unauthenticated", errors.New("an operator token is required (Authorization: Bearer ...)"))
			return
		}
		res, err := fn(w, r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) authorized(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.tokenValid(token)
}

// tokenValid compares token's SHA-256 with every operator's, in constant
// time.
func (s *Server) tokenValid(token string) bool {
	if token == "" {
		return false
	}
	h := TokenHash(token)
	match := 0
	for _, want := range s.Operators {
		match |= subtle.ConstantTimeCompare(h[:], want[:])
	}
	return match == 1
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrRejected):
		writeError(w, http.StatusUnprocessableEntity, "rejected", err)
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err)
	case errors.Is(err, ErrExists):
		writeError(w, http.StatusConflict, "conflict", err)
	case errors.Is(err, ErrWrongSecret):
		writeError(w, http.StatusForbidden, "wrong_secret", err)
	default:
		if s.Log != nil {
			s.Log.Error("request failed", "path", r.URL.Path, "err", err)
		}
		writeError(w, http.StatusInternalServerError, "internal", errors.New("internal error"))
	}
}

func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, fleetapi.MaxBody+1))
	if err != nil {
		return err
	}
	if len(b) > fleetapi.MaxBody {
		return fmt.Errorf("a body of more than %d bytes", fleetapi.MaxBody)
	}
	return strictjson.Decode(b, v)
}

func writeError(w http.ResponseWriter, status int, code string, err error) {
	var b fleetapi.ErrorBody
	b.Error.Code, b.Error.Message = code, err.Error()
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// checkClass is firmware.CheckClass as a rejection.
func checkClass(c string) error {
	if err := firmware.CheckClass(c); err != nil {
		return rejected("class: %v", err)
	}
	return nil
}

// ServerTimeouts are the http.Server timeouts provd fleet serve uses.
var ServerTimeouts = struct{ ReadHeader, Read, Write, Idle time.Duration }{10 * time.Second, 30 * time.Second, 30 * time.Second, 120 * time.Second}

// MaxKey bounds a delivered key's PKCS#8: an RSA-4096 key is about 2.4 KB.
const MaxKey = 8 << 10

// secretInfo describes a secret or key without its value: a key's public
// part, PEM.
func secretInfo(sec Secret) fleetapi.SecretInfo {
	info := fleetapi.SecretInfo{Class: sec.Class, Name: sec.Name, Kind: sec.Kind, UpdatedAt: sec.UpdatedAt}
	if sec.Kind == fleetapi.KindKey {
		if k, err := ParseDeliveryKey(sec.Value); err == nil {
			if der, err := x509.MarshalPKIXPublicKey(k.Public()); err == nil {
				info.PublicKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			}
		}
	}
	return info
}

// authValueOnly is the digest of PolicyAuthValue (and PolicyPassword)
// alone, from a fresh session: a PK "policy" any session on any boot
// satisfies (found by review: a device registered it).
var authValueOnly = func() string {
	d, err := policy.Policy{policy.AuthValue{}}.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		panic(err)
	}
	return hex.EncodeToString(d)
}()
