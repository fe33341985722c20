package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// spellings are the ways a client can write a header name that some
// upstream stack reads as the canonical one.
func spellings(name string) []string {
	lower, upper := strings.ToLower(name), strings.ToUpper(name)
	return []string{
		name, lower, upper,
		strings.ReplaceAll(name, "-", "_"), strings.ReplaceAll(upper, "-", "_"),
		strings.ReplaceAll(name, "-", "."), strings.ReplaceAll(lower, "-", "."),
		mixDashes(name),
	}
}

// mixDashes alternates "_" and "." for the dashes of name.
func mixDashes(name string) string {
	var b strings.Builder
	n := 0
	for _, r := range name {
		if r == '-' {
			r = []rune{'_', '.'}[n%2]
			n++
		}
		b.WriteRune(r)
	}
	return b.String()
}

// TestOverrideHeadersStrippedInEverySpelling: every header that can change
// the method, the target or the client an upstream believes, in every
// spelling, is removed before the call is forwarded (the call itself goes
// through: one upstream hit each); X-Forwarded-* then carry the proxy's own
// values, and strip_headers adds an operator's names and prefixes. Before,
// X_HTTP_Method_Override, X.HTTP.Method.Override, X-Original-URL, X-Real-IP
// and X_Forwarded_For reached the upstream.
func TestOverrideHeadersStrippedInEverySpelling(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.StripHeaders = []string{"X-Acme-User", "X-Tenant-*"} })
	_, tok := h.healer()
	names := []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-Method",
		"X-Original-URL", "X-Original-URI", "X-Rewrite-URL", "X-Original-Host", "X-Host", "X-Real-IP", "X-Client-IP",
		"True-Client-IP", "X-Cluster-Client-IP", "Client-IP", "CF-Connecting-IP", "Fastly-Client-IP", "Forwarded",
		"X-Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Prefix",
		"X-Forwarded-Port", "X-Forwarded-Server", "X-Acme-User", "X-Tenant-Id", "X-Tenant-Override"}
	for _, name := range names {
		for _, sp := range spellings(name) {
			before := h.up.hits.Load()
			res := h.do("GET", "/services/checkout", tok, map[string]string{sp: "DELETE /admin 10.0.0.1"}, "")
			if res.status != 200 || h.up.hits.Load() != before+1 {
				t.Fatalf("%s: %d %s (upstream hits %d)", sp, res.status, res.body, h.up.hits.Load()-before)
			}
			r, _ := h.up.lastReq()
			for k, vs := range r.Header {
				if normHeader(k) != normHeader(name) {
					continue
				}
				switch normHeader(name) {
				case "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto":
					if strings.Contains(strings.Join(vs, ","), "DELETE") {
						t.Fatalf("%s reached the upstream as %s: %q", sp, k, vs)
					}
				default:
					t.Fatalf("%s reached the upstream as %s: %q", sp, k, vs)
				}
			}
		}
	}
	r, _ := h.up.lastReq()
	if got := r.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
		t.Fatalf("X-Forwarded-For = %q, want the proxy's view of the client", got)
	}
	if r.Method != http.MethodGet || r.URL.Path != "/services/checkout" {
		t.Fatalf("the upstream got %s %s", r.Method, r.URL.Path)
	}
}

// TestFormMethodOverrideRefused: a form body or a query that carries
// _method, in any case or as _method[...], is refused and reaches nothing.
// Before, a form body with _method=DELETE was forwarded.
func TestFormMethodOverrideRefused(t *testing.T) {
	h := newHarness(t)
	_, tok := h.healer()
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	multi := map[string]string{"Content-Type": "multipart/form-data; boundary=XyZ"}
	part := func(name string) string {
		return "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n" +
			"--XyZ\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\nDELETE\r\n--XyZ--\r\n"
	}
	for _, tc := range []struct {
		name, path, body string
		hdr              map[string]string
		code             string
	}{
		{"form", "/services/checkout/restart", "a=1&_method=DELETE", form, "bad_body"},
		{"form, upper case", "/services/checkout/restart", "_METHOD=DELETE", form, "bad_body"},
		{"form, encoded", "/services/checkout/restart", "%5Fmethod=DELETE", form, "bad_body"},
		{"form, bracketed", "/services/checkout/restart", "_method[]=DELETE", form, "bad_body"},
		{"form, charset", "/services/checkout/restart", "_method=DELETE",
			map[string]string{"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=utf-8"}, "bad_body"},
		{"form, malformed", "/services/checkout/restart", "a=%zz&_method=DELETE", form, "bad_body"},
		{"multipart", "/services/checkout/restart", part("_method"), multi, "bad_body"},
		{"multipart, upper case", "/services/checkout/restart", part("_Method"), multi, "bad_body"},
		{"multipart, no boundary", "/services/checkout/restart", part("_method"),
			map[string]string{"Content-Type": "multipart/form-data"}, "bad_body"},
		{"query, mixed case", "/services/checkout/restart?_Method=DELETE", "", nil, "bad_query"},
		{"query, bracketed", "/services/checkout/restart?_method%5B%5D=DELETE", "", nil, "bad_query"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.hits.Load()
			res := h.do("POST", tc.path, tok, tc.hdr, tc.body)
			if res.status != 400 || !strings.Contains(res.body, `"code":"`+tc.code+`"`) {
				t.Fatalf("%d %s, want 400 %s", res.status, res.body, tc.code)
			}
			if n := h.up.hits.Load() - before; n != 0 {
				t.Fatalf("reached the upstream %d times", n)
			}
			if reason, _, ok := h.refusalFor(res.header.Get(HeaderXRequest)); !ok || reason != tc.code {
				t.Fatalf("want one refusal %s: %v %q", tc.code, ok, reason)
			}
		})
	}
	// Forms without an override still go through, as sent.
	for _, body := range []string{"a=1&method=x&_methods=y", part("methodical")} {
		hdr := form
		if strings.HasPrefix(body, "--") {
			hdr = multi
		}
		before := h.up.hits.Load()
		if res := h.do("POST", "/services/checkout/restart", tok, hdr, body); res.status != 200 || h.up.hits.Load() != before+1 {
			t.Fatalf("%q: %d %s", body, res.status, res.body)
		}
		if _, got := h.up.lastReq(); got != body {
			t.Fatalf("the upstream got %q, not %q", got, body)
		}
	}
}

func TestHeaderStripMatch(t *testing.T) {
	s := newHeaderStrip([]string{"X-Acme-User", "X-Tenant*", "x_b.c-*"})
	for k, want := range map[string]bool{
		"X-Http-Method-Override": true, "x_http_method_override": true, "X.HTTP.METHOD.OVERRIDE": true,
		"X-Forwarded-Anything": true, "x_forwarded": true, "X-Forwardedfor": false, "Forwarded": true,
		"X-Acme-User": true, "X_ACME_USER": true, "X-Acme-Username": false, "X-Tenant-Id": true, "X-Tenantid": false,
		"X-B-C-D": true, "Content-Type": false, "X-Passport-Agent": false, "X-Real-IPv6": false,
		strings.Repeat("X-Forwarded-", 10): true, strings.Repeat("Y", 100): false,
	} {
		if got := s.match(k); got != want {
			t.Errorf("match(%q) = %v, want %v", k, got, want)
		}
	}
}
