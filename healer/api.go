package healer

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentpassport/passport/internal/problem"
)

// NewAPI returns the incidents HTTP API:
//
//	GET /v1/tenants/{tenant}/incidents[?limit=N]  {"incidents": [...]}, newest first (limit ≤ 1000, default 100)
//	GET /v1/tenants/{tenant}/incidents/{id}       the incident, or 404
//	GET /healthz                                  liveness, no auth
//	GET /metrics                                  Prometheus, when reg is not nil
//
// The v1 routes require "Authorization: Bearer <admin token>". With no
// admin token configured they answer 401 to everyone: incidents name the
// services that are failing, which is reconnaissance for an attacker, so
// the API fails closed rather than open.
func NewAPI(store *Store, adminToken string, reg prometheus.Gatherer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	if reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	auth := func(next http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if adminToken == "" || !ok || subtle.ConstantTimeCompare([]byte(got), []byte(adminToken)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="passport-healer"`)
				problem.Answer(w, http.StatusUnauthorized, "unauthenticated", "admin token required")
				return
			}
			if !ValidTenant(r.PathValue("tenant")) {
				problem.Answer(w, http.StatusBadRequest, "invalid_tenant", "invalid tenant name")
				return
			}
			next(w, r)
		}
	}
	mux.HandleFunc("GET /v1/tenants/{tenant}/incidents", auth(func(w http.ResponseWriter, r *http.Request) {
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 1000 {
				problem.Answer(w, http.StatusBadRequest, "invalid_request", "limit must be 1..1000")
				return
			}
			limit = n
		}
		list, err := store.List(r.Context(), r.PathValue("tenant"), limit)
		if err != nil {
			log.ErrorContext(r.Context(), "list incidents", "err", err)
			problem.Answer(w, http.StatusServiceUnavailable, "unavailable", "incident store unavailable")
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"incidents": list})
	}))
	mux.HandleFunc("GET /v1/tenants/{tenant}/incidents/{id}", auth(func(w http.ResponseWriter, r *http.Request) {
		in, err := store.Get(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
		switch {
		case errors.Is(err, ErrNotFound):
			problem.Answer(w, http.StatusNotFound, "incident_not_found", "incident not found")
		case err != nil:
			log.ErrorContext(r.Context(), "get incident", "err", err)
			problem.Answer(w, http.StatusServiceUnavailable, "unavailable", "incident store unavailable")
		default:
			writeJSON(w, http.StatusOK, in)
		}
	}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
