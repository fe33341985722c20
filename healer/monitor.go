package healer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Incident types the monitor classifies failures into. They match the
// chaos fault types so that each fault has a playbook; TypeUnhealthy is
// any other failure (a 4xx, an unexpected answer).
const (
	TypeServiceDown = "service_down"
	TypeBadDeploy   = "bad_deploy"
	TypeMemoryLeak  = "memory_leak"
	TypeCacheMiss   = "cache_miss"
	TypeUnhealthy   = "unhealthy"
)

// Thresholds turn a health answer's vital signs into a verdict. A field
// absent from the answer is not judged, so any HTTP health URL can be
// monitored: a plain 200 passes.
type Thresholds struct {
	// ErrorRate at or above which the service fails (bad_deploy). Default 0.5.
	ErrorRate float64 `yaml:"error_rate"`
	// MemoryBytes at or above which it fails (memory_leak). Default 64 MiB.
	MemoryBytes int64 `yaml:"memory_bytes"`
	// CacheHitRatio below which it fails (cache_miss). Default 0.5.
	CacheHitRatio float64 `yaml:"cache_hit_ratio"`
}

// probeResult is one health check's verdict.
type probeResult struct {
	OK     bool
	Type   string // incident type when !OK
	Detail string // short, safe description
}

// vitals are the fields of a health answer the monitor understands.
type vitals struct {
	ErrorRate     *float64 `json:"error_rate"`
	MemoryBytes   *int64   `json:"memory_bytes"`
	CacheHitRatio *float64 `json:"cache_hit_ratio"`
}

// probe performs one check of url and classifies the answer.
func probe(ctx context.Context, hc *http.Client, url string, timeout time.Duration, th Thresholds) probeResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return probeResult{Type: TypeUnhealthy, Detail: "bad health url"}
	}
	req.Header.Set("User-Agent", "passport-healer")
	resp, err := hc.Do(req)
	if err != nil {
		return probeResult{Type: TypeServiceDown, Detail: transportDetail(err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return classify(resp.StatusCode, body, th)
}

// classify judges a health answer: its status, then the vital signs of a
// JSON body. Fields absent from the body are not judged.
func classify(status int, body []byte, th Thresholds) probeResult {
	if status >= 500 {
		return probeResult{Type: TypeBadDeploy, Detail: fmt.Sprintf("health answered %d", status)}
	}
	if status < 200 || status > 299 {
		return probeResult{Type: TypeUnhealthy, Detail: fmt.Sprintf("health answered %d", status)}
	}
	var v vitals
	if json.Unmarshal(body, &v) != nil {
		return probeResult{OK: true} // not JSON: the 2xx is the verdict
	}
	switch {
	case v.ErrorRate != nil && *v.ErrorRate >= th.ErrorRate:
		return probeResult{Type: TypeBadDeploy, Detail: fmt.Sprintf("error rate %.2f", *v.ErrorRate)}
	case v.MemoryBytes != nil && *v.MemoryBytes >= th.MemoryBytes:
		return probeResult{Type: TypeMemoryLeak, Detail: fmt.Sprintf("memory %d MiB", *v.MemoryBytes>>20)}
	case v.CacheHitRatio != nil && *v.CacheHitRatio < th.CacheHitRatio:
		return probeResult{Type: TypeCacheMiss, Detail: fmt.Sprintf("cache hit ratio %.2f", *v.CacheHitRatio)}
	}
	return probeResult{OK: true}
}

func transportDetail(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	}
	return "unreachable"
}

// hysteresis is Caddy's pass/fail counting: a healthy target turns
// unhealthy only after Fall consecutive failures and back only after Rise
// consecutive passes, so one lost probe does not open an incident and one
// lucky probe does not close it.
type hysteresis struct {
	rise, fall    int
	healthy       bool
	passes, fails int
}

// observe feeds one result and reports whether the state changed.
func (h *hysteresis) observe(ok bool) (changed bool) {
	if ok {
		h.passes++
		h.fails = 0
		if !h.healthy && h.passes >= h.rise {
			h.healthy = true
			return true
		}
		return false
	}
	h.fails++
	h.passes = 0
	if h.healthy && h.fails >= h.fall {
		h.healthy = false
		return true
	}
	return false
}
