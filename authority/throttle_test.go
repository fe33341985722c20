package authority

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (127.0.0.0/8 is all loopback on Linux), so tests can play
// several source addresses.
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// tokenFrom asks for a passport with client_secret_basic over c.
func (e *env) tokenFrom(c *http.Client, clientID, secret string) (status int, retryAfter string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/oauth2/token", strings.NewReader("grant_type=client_credentials"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	resp, err := c.Do(req)
	if err != nil {
		e.t.Error(err)
		return 0, ""
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// An attacker who knows the healer's client id (it is in every passport)
// hammers it with wrong secrets from one address. The real healer, from
// another address, gets every passport it asks for meanwhile; the
// attacker is refused with 429 after the limit, and its refused guesses
// cost no bcrypt. Before the fix, ten failures locked the client id out
// for everyone.
func TestNoLockoutWithoutTheSecret(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Clients.AuthFailureLimit = 5
		c.Clients.SecretCacheTTL = 0 // every request of the healer pays bcrypt too
	}, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	attacker, agent := clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.3")

	var unauthorized, limited, other atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	stopAttack := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopAttack()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				switch st, ra := e.tokenFrom(attacker, healer.ClientID, "cs_guess"); {
				case st == http.StatusUnauthorized:
					unauthorized.Add(1)
				case st == http.StatusTooManyRequests && ra != "":
					limited.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	// Once the limit's five failures are answered, their hashes are counted.
	waitFor(t, 10*time.Second, "the attacker to be limited", func() bool { return limited.Load() > 0 && unauthorized.Load() >= 5 })
	hashesBefore := counter(t, e.reg, "passport_authority_secret_hashes_total")
	for i := range 20 {
		if st, _ := e.tokenFrom(agent, healer.ClientID, healer.ClientSecret); st != http.StatusOK {
			t.Fatalf("passport %d for the real healer during the attack: %d", i, st)
		}
	}
	limitedBefore := limited.Load()
	waitFor(t, 10*time.Second, "more attacker refusals", func() bool { return limited.Load() > limitedBefore+20 })
	stopAttack()

	if unauthorized.Load() != 5 || other.Load() != 0 {
		t.Fatalf("attacker: %d wrong-secret answers (want exactly the limit, 5), %d 429s, %d others",
			unauthorized.Load(), limited.Load(), other.Load())
	}
	// Only the healer's own 20 requests hashed a secret once the attacker
	// was limited: the limit comes before bcrypt.
	if n := counter(t, e.reg, "passport_authority_secret_hashes_total") - hashesBefore; n != 20 {
		t.Fatalf("%v bcrypt comparisons while the attacker was limited, want the healer's 20", n)
	}
}

// One address trying many client ids is limited as a whole, before any
// bcrypt (unknown ids pay a dummy comparison so they cannot be told apart
// from wrong secrets by timing); other addresses are not affected.
func TestSourceLimitComesFirst(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clients.SourceFailureLimit = 8 }, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	attacker, agent := clientFrom(t, "127.0.0.4"), clientFrom(t, "127.0.0.5")
	codes := map[int]int{}
	for range 40 {
		st, _ := e.tokenFrom(attacker, randomAgentID(), "x")
		codes[st]++
	}
	if codes[http.StatusUnauthorized] != 8 || codes[http.StatusTooManyRequests] != 32 {
		t.Fatalf("40 made-up client ids from one address: %v, want 8×401 then 32×429", codes)
	}
	if n := counter(t, e.reg, "passport_authority_secret_hashes_total"); n != 8 {
		t.Fatalf("%v bcrypt comparisons, want 8", n)
	}
	// The address is limited for real client ids too, the healer elsewhere is not.
	if st, ra := e.tokenFrom(attacker, healer.ClientID, healer.ClientSecret); st != http.StatusTooManyRequests || ra == "" {
		t.Fatalf("limited address: %d (Retry-After %q)", st, ra)
	}
	if st, _ := e.tokenFrom(agent, healer.ClientID, healer.ClientSecret); st != http.StatusOK {
		t.Fatalf("healer from another address: %d", st)
	}
	if counter(t, e.reg, "passport_authority_client_auth_failures_total", "reason", "source_limited") != 33 {
		t.Fatal("source_limited not counted")
	}
}

// Concurrent guesses cannot slip past the limit: the attempt is counted
// before the secret is checked, atomically in Redis.
func TestConcurrentGuessesStayWithinTheLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clients.AuthFailureLimit = 3 }, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	c := clientFrom(t, "127.0.0.6")
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, _ := e.tokenFrom(c, healer.ClientID, "cs_guess")
			mu.Lock()
			codes[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[http.StatusUnauthorized] != 3 || codes[http.StatusTooManyRequests] != 37 {
		t.Fatalf("40 concurrent guesses: %v, want 3×401 and 37×429", codes)
	}
}

// A success gives its reservation back: an agent that authenticates often
// from one address never runs into the failure limit.
func TestSuccessesDoNotUseTheBudget(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Clients.AuthFailureLimit = 2
		c.Clients.SourceFailureLimit = 2
	}, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	c := clientFrom(t, "127.0.0.7")
	for i := range 10 {
		if st, _ := e.tokenFrom(c, healer.ClientID, healer.ClientSecret); st != http.StatusOK {
			t.Fatalf("passport %d: %d", i, st)
		}
	}
	n, err := e.rdb.Get(context.Background(), sourceFailKey("127.0.0.7")).Int()
	if err != nil || n != 0 {
		t.Fatalf("source counter after 10 successes: %d %v", n, err)
	}
}

// A secret verified moments ago costs no bcrypt, so it passes even from
// an address whose budget a guesser used up (an agent behind the same NAT
// as an attacker keeps working); a new, wrong or changed secret does not.
func TestVerifiedSecretPassesTheLimits(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clients.AuthFailureLimit = 2 }, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	observer := e.register("acme", "observer-1", "observer", passport.TrustLow)
	nat := clientFrom(t, "127.0.0.9")
	if st, _ := e.tokenFrom(nat, healer.ClientID, healer.ClientSecret); st != http.StatusOK {
		t.Fatalf("first passport: %d", st)
	}
	for range 2 {
		e.tokenFrom(nat, healer.ClientID, "cs_guess")
		e.tokenFrom(nat, observer.ClientID, "cs_guess")
	}
	if st, ra := e.tokenFrom(nat, healer.ClientID, "cs_guess"); st != http.StatusTooManyRequests || ra == "" {
		t.Fatalf("guesser over the limit: %d", st)
	}
	if st, _ := e.tokenFrom(nat, healer.ClientID, healer.ClientSecret); st != http.StatusOK {
		t.Fatalf("the healer's verified secret from the same address: %d", st)
	}
	if st, _ := e.tokenFrom(nat, observer.ClientID, observer.ClientSecret); st != http.StatusTooManyRequests {
		t.Fatalf("a secret not verified recently from the limited address: %d, want 429", st)
	}
}

// bcrypt runs in a bounded number of slots; a request that cannot get one
// within hash_wait is answered 503 with Retry-After, and costs no hash.
func TestBcryptSlotsAreBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Clients.MaxConcurrentHashes = 1
		c.Clients.HashWait = 50 * time.Millisecond
		c.Clients.SecretCacheTTL = 0
	}, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	if cap(e.a.hashSlots) != 1 {
		t.Fatalf("%d slots", cap(e.a.hashSlots))
	}
	e.a.hashSlots <- struct{}{} // someone else's comparison holds the only slot
	st, ra := e.tokenFrom(http.DefaultClient, healer.ClientID, healer.ClientSecret)
	if st != http.StatusServiceUnavailable || ra != "1" {
		t.Fatalf("no free slot: %d (Retry-After %q), want 503 and Retry-After 1", st, ra)
	}
	if counter(t, e.reg, "passport_authority_secret_hashes_total") != 0 || counter(t, e.reg, "passport_authority_secret_hash_busy_total") != 1 {
		t.Fatal("hash metrics")
	}
	<-e.a.hashSlots
	if st, _ := e.tokenFrom(http.DefaultClient, healer.ClientID, healer.ClientSecret); st != http.StatusOK {
		t.Fatalf("with a free slot: %d", st)
	}
	// A busy answer is nobody's failure: the reservation was given back.
	if n, _ := e.rdb.Get(context.Background(), sourceFailKey("127.0.0.1")).Int(); n != 0 {
		t.Fatalf("source counter %d after a busy answer and a success", n)
	}
}

// X-Forwarded-For is believed only from a trusted proxy, read right to
// left; an IPv6 source counts as its /64.
func TestSourceOf(t *testing.T) {
	trusted, err := parseTrustedProxies([]string{"10.0.0.0/8", "192.0.2.10", "::ffff:192.0.2.11"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"direct", "198.51.100.7:4000", nil, "198.51.100.7"},
		{"spoofed header from an untrusted peer", "198.51.100.7:4000", []string{"203.0.113.9"}, "198.51.100.7"},
		{"through a trusted proxy", "10.1.2.3:4000", []string{"203.0.113.9"}, "203.0.113.9"},
		{"client-sent entry left of the real one", "10.1.2.3:4000", []string{"203.0.113.66, 203.0.113.9"}, "203.0.113.9"},
		{"two trusted hops", "10.1.2.3:4000", []string{"203.0.113.9", "192.0.2.10"}, "203.0.113.9"},
		{"mapped trusted hop", "10.1.2.3:4000", []string{"203.0.113.9, ::ffff:192.0.2.11"}, "203.0.113.9"},
		{"garbage hop", "10.1.2.3:4000", []string{"not-an-ip"}, "10.1.2.3"},
		{"garbage behind a trusted hop", "10.1.2.3:4000", []string{"junk, 192.0.2.10"}, "192.0.2.10"},
		{"only trusted hops", "10.1.2.3:4000", []string{"10.9.9.9"}, "10.9.9.9"},
		{"trusted peer, no header", "10.1.2.3:4000", nil, "10.1.2.3"},
		{"IPv4-mapped peer", "[::ffff:198.51.100.7]:4000", nil, "198.51.100.7"},
		{"IPv6 counts as its /64", "[2001:db8:1:2:3:4:5:6]:4000", nil, "2001:db8:1:2::/64"},
		{"IPv6 zone dropped", "[fe80::1%eth0]:4000", nil, "fe80::/64"},
		{"no TCP address", "@", nil, "unknown"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodPost, "/oauth2/token", nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := sourceKey(sourceOf(r, trusted)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	if _, err := parseTrustedProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Error("bad CIDR accepted")
	}
	if got := netip.MustParseAddr("::ffff:1.2.3.4").Unmap().String(); got != "1.2.3.4" {
		t.Fatal(got)
	}
}

// Through a trusted reverse proxy, each client is counted by its own
// address: one client's failures do not limit another behind the same
// proxy, and a client that sends its own X-Forwarded-For directly is
// counted by its connection.
func TestTrustedProxyForwardedFor(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Clients.AuthFailureLimit = 2
		c.Clients.TrustedProxies = []string{"127.0.0.1"}
		c.Clients.SecretCacheTTL = 0 // a cached success would pass any limit (TestVerifiedSecretPassesTheLimits)
	}, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	try := func(c *http.Client, xff, secret string) int {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/oauth2/token", strings.NewReader("grant_type=client_credentials"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Forwarded-For", xff)
		req.SetBasicAuth(healer.ClientID, secret)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	proxyConn := clientFrom(t, "127.0.0.1")
	for range 5 {
		try(proxyConn, "203.0.113.66", "cs_guess")
	}
	if st := try(proxyConn, "203.0.113.66", healer.ClientSecret); st != http.StatusTooManyRequests {
		t.Fatalf("the guessing client behind the proxy: %d", st)
	}
	if st := try(proxyConn, "203.0.113.9", healer.ClientSecret); st != http.StatusOK {
		t.Fatalf("another client behind the same proxy: %d", st)
	}
	// An untrusted peer cannot borrow another address's budget, nor
	// escape its own, by sending the header itself.
	direct := clientFrom(t, "127.0.0.8")
	for range 2 {
		try(direct, "203.0.113.9", "cs_guess")
	}
	if st := try(direct, "203.0.113.10", healer.ClientSecret); st != http.StatusTooManyRequests {
		t.Fatalf("untrusted peer with a new X-Forwarded-For: %d", st)
	}
	if st := try(proxyConn, "203.0.113.9", healer.ClientSecret); st != http.StatusOK {
		t.Fatalf("the address the untrusted peer named: %d", st)
	}
}

// Introspection and revocation authenticate agents with the same limits.
func TestIntrospectionSharesTheLimits(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Clients.AuthFailureLimit, c.Clients.SecretCacheTTL = 2, 0 }, nil, nil)
	healer := e.register("acme", "healer-1", "healer", passport.TrustHigh)
	raw := e.token(healer, nil)
	for range 2 {
		resp, _ := e.post("/oauth2/introspect", "application/x-www-form-urlencoded", url.Values{"token": {raw}}.Encode(),
			func(r *http.Request) { r.SetBasicAuth(healer.ClientID, "cs_guess") })
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad secret: %d", resp.StatusCode)
		}
	}
	resp, _ := e.post("/oauth2/revoke", "application/x-www-form-urlencoded", url.Values{"token": {raw}}.Encode(), basicAuthOf(healer))
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("revoke after the limit from the same address: %d", resp.StatusCode)
	}
	// The agent's client library reports it as rate limited.
	c, _ := client.New(e.srv.URL, healer.ClientID, passport.Secret(healer.ClientSecret), client.Options{})
	if _, err := c.Token(context.Background(), client.TokenRequest{}); err == nil {
		t.Fatal("token from the limited address")
	}
}

func randomAgentID() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	return agentIDPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}
