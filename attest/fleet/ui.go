package fleet

import (
	"embed"
	"errors"
	"html/template"
	"net/http"
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

const uiCookie = "provd_operator"

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
		http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: token, Path: "/ui/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode, MaxAge: 8 * 3600})
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	})
	mux.HandleFunc("POST /ui/logout", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: "", Path: "/ui/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	})
}

func (s *Server) uiAuthorized(r *http.Request) bool {
	c, err := r.Cookie(uiCookie)
	return err == nil && s.tokenValid(c.Value)
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
