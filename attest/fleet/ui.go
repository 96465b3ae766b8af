package fleet

import (
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"net/http"
	"sync"
	"time"

	"github.com/provd/provd/attest/fleetapi"
)

// The operators' web page: read-only, rendered by the server itself
// (html/template, no build step, no script). It shows the devices, their
// last verdicts, what differs from their class's policy, and their history.
// It is an operator endpoint: the operator signs in with a token (a form
// posted over TLS), kept in an HttpOnly, Secure, SameSite=Strict cookie
// scoped to /ui/.

//go:embed ui/*.html
var uiFiles embed.FS

var uiTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"short": func(s string) string {
		if len(s) > 16 {
			return s[:16] + "…"
		}
		return s
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"reason": fleetapi.Reason.String,
}).ParseFS(uiFiles, "ui/*.html"))

// uiCookie is the sign-in session's cookie: a random session ID, never the
// token (found by review: a cookie holding the token outlived sign-out and
// worked as a bearer token). __Host-: Secure, Path=/, no Domain.
const uiCookie = "__Host-provd_session"

// uiSessionTTL is how long a sign-in lasts.
const uiSessionTTL = 8 * time.Hour

// maxUISessions bounds the sessions one replica keeps.
const maxUISessions = 1024

// sessions are the operators' page sign-ins, in memory per replica.
type sessions struct {
	mu  sync.Mutex
	ids map[string]time.Time // ID -> expiry
}

func (ss *sessions) add(now time.Time) (string, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ids == nil {
		ss.ids = map[string]time.Time{}
	}
	for id, exp := range ss.ids {
		if !now.Before(exp) {
			delete(ss.ids, id)
		}
	}
	if len(ss.ids) >= maxUISessions {
		return "", false
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", false
	}
	id := hex.EncodeToString(b)
	ss.ids[id] = now.Add(uiSessionTTL)
	return id, true
}

func (ss *sessions) valid(id string, now time.Time) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	exp, ok := ss.ids[id]
	return ok && now.Before(exp)
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.ids, id)
}

func (s *Server) uiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /ui/", func(w http.ResponseWriter, r *http.Request) {
		if !s.uiAuthorized(r) {
			s.render(w, http.StatusOK, "login.html", map[string]any{})
			return
		}
		ds, err := s.E.cfg.Store.Devices(r.Context(), r.URL.Query().Get("after"), 200)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		views := make([]fleetapi.Device, 0, len(ds))
		for _, d := range ds {
			views = append(views, deviceView(d))
		}
		s.render(w, http.StatusOK, "devices.html", map[string]any{"Devices": views})
	})
	mux.HandleFunc("GET /ui/devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !s.uiAuthorized(r) {
			http.Redirect(w, r, "/ui/", http.StatusSeeOther)
			return
		}
		d, err := s.E.cfg.Store.Device(r.Context(), r.PathValue("id"))
		if errors.Is(err, ErrNotFound) {
			s.render(w, http.StatusNotFound, "device.html", map[string]any{"Missing": r.PathValue("id")})
			return
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		hist, err := s.E.cfg.Store.Appraisals(r.Context(), d.ID, 50)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		var differs []fleetapi.Reason
		if len(hist) > 0 && !hist[0].Pass {
			differs = hist[0].Reasons
		}
		s.render(w, http.StatusOK, "device.html", map[string]any{"Device": deviceView(d), "History": hist, "Differs": differs})
	})
	mux.HandleFunc("POST /ui/login", func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		token := r.PostFormValue("token")
		if !s.tokenValid(token) {
			s.render(w, http.StatusUnauthorized, "login.html", map[string]any{"Failed": true})
			return
		}
		id, ok := s.ui.add(s.E.now())
		if !ok {
			s.render(w, http.StatusServiceUnavailable, "login.html", map[string]any{"Failed": true})
			return
		}
		http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: id, Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode, MaxAge: int(uiSessionTTL.Seconds())})
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	})
	mux.HandleFunc("POST /ui/logout", func(w http.ResponseWriter, r *http.Request) {
		if c, err := r.Cookie(uiCookie); err == nil {
			s.ui.remove(c.Value)
		}
		http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: "", Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	})
}

func (s *Server) uiAuthorized(r *http.Request) bool {
	c, err := r.Cookie(uiCookie)
	return err == nil && s.ui.valid(c.Value, s.E.now())
}

func (s *Server) render(w http.ResponseWriter, status int, name string, data map[string]any) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	if err := uiTemplates.ExecuteTemplate(w, name, data); err != nil && s.Log != nil {
		s.Log.Error("ui: render", "page", name, "err", err)
	}
}
