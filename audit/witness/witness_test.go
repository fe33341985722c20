package witness_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/audit/witness"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redistest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newServer(t *testing.T, mutate func(*witness.Config)) (*witness.Server, *httptest.Server) {
	t.Helper()
	cfg := witness.Default()
	cfg.Dir = filepath.Join(t.TempDir(), "witness")
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := witness.New(cfg, witness.Deps{Logger: quiet(), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return srv, hs
}

func stmt(t *testing.T, key ed25519.PrivateKey, writer string, at time.Time, seq uint64, salt string) []byte {
	t.Helper()
	sum := sha256.Sum256([]byte(salt))
	st := audit.Statement{V: audit.StatementVersion, Type: audit.StatementCheckpoint, Writer: writer, Time: at.UTC().Format(time.RFC3339Nano),
		Streams: []audit.StreamHead{{Tenant: "acme", Seq: seq, Hash: hex.EncodeToString(sum[:]), Checkpoint: "periodic", Time: at.UTC().Format(time.RFC3339Nano)}}}
	raw, err := audit.SignStatement(&st, key)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func post(t *testing.T, url, token string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/statements", bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Code string `json:"code"`
	}
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &p)
	return resp.StatusCode, p.Code
}

// Who may write: only whoever signs as the writer, forward in time, never
// back in a stream's seq nor beside it (fork); with a token, only its
// holders; with trusted keys, only those writers.
func TestServerRefusesWhatItMustNotStore(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	t0 := time.Now()
	keys := filepath.Join(t.TempDir(), "trusted")
	os.WriteFile(keys, []byte(audit.TrustedKeyLine("proxy-a", pub)+"\n"), 0o600)
	const token = "witness-token-0123456789"
	cases := []struct {
		name   string
		cfg    func(*witness.Config)
		token  string
		body   []byte
		status int
		code   string
	}{
		{"next statement", nil, "", stmt(t, key, "proxy-a", t0.Add(2*time.Second), 20, "b"), 200, ""},
		{"rollback", nil, "", stmt(t, key, "proxy-a", t0.Add(2*time.Second), 5, "c"), 409, audit.RefusedRollback},
		{"fork", nil, "", stmt(t, key, "proxy-a", t0.Add(2*time.Second), 10, "fork"), 409, audit.RefusedFork},
		{"replay", nil, "", stmt(t, key, "proxy-a", t0, 10, "a"), 409, audit.RefusedStale},
		{"another key", nil, "", stmt(t, other, "proxy-a", t0.Add(2*time.Second), 20, "b"), 403, audit.RefusedKey},
		{"not a statement", nil, "", []byte(`{"v":1}`), 400, audit.RefusedInvalid},
		{"too large", nil, "", bytes.Repeat([]byte(" "), audit.MaxStatementBytes+1), 413, audit.RefusedInvalid},
		{"no token", func(c *witness.Config) { c.Token = token }, "", stmt(t, key, "proxy-a", t0.Add(2*time.Second), 20, "b"), 401, audit.RefusedUnauthorized},
		{"wrong token", func(c *witness.Config) { c.Token = token }, "witness-token-wrong-000000", stmt(t, key, "proxy-a", t0.Add(2*time.Second), 20, "b"), 401, audit.RefusedUnauthorized},
		{"right token", func(c *witness.Config) { c.Token = token }, token, stmt(t, key, "proxy-a", t0.Add(2*time.Second), 20, "b"), 200, ""},
		{"not a trusted writer", func(c *witness.Config) { c.TrustedKeysFile = keys }, "", stmt(t, other, "stranger", t0.Add(2*time.Second), 1, "s"), 403, audit.RefusedUnknown},
		{"trusted writer", func(c *witness.Config) { c.TrustedKeysFile = keys }, "", stmt(t, key, "proxy-a", t0.Add(2*time.Second), 20, "b"), 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, hs := newServer(t, tc.cfg)
			tok := ""
			if tc.cfg != nil {
				tok = token
			}
			if st, code := post(t, hs.URL, tok, stmt(t, key, "proxy-a", t0.Add(time.Second), 10, "a")); st != 200 {
				t.Fatalf("first statement: %d %s", st, code)
			}
			st, code := post(t, hs.URL, tc.token, tc.body)
			if st != tc.status || code != tc.code {
				t.Fatalf("got %d %q, want %d %q", st, code, tc.status, tc.code)
			}
			if tc.code != "" {
				resp, err := http.Get(hs.URL + "/metrics")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(b), fmt.Sprintf(`passport_witness_statements_total{result=%q} 1`, tc.code)) {
					t.Errorf("refusal not counted:\n%s", b)
				}
			}
		})
	}
}

// A writer hands its statements to a `passport witness` over HTTP; verify
// reads them back over HTTP and catches a tail cut that Redis alone hides.
func TestWriterAndVerifyThroughHTTPWitness(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	// Served on a listener of its own, as `passport witness` does.
	srv, err := witness.New(func() witness.Config {
		c := witness.Default()
		c.Dir = t.TempDir()
		return c
	}(), witness.Deps{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopServer := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		stopServer()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	w, err := audit.OpenWitness("http://"+ln.Addr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := audit.NewStream(rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointEvery: 5, CheckpointInterval: 10 * time.Millisecond,
		Witnesses: []audit.Witness{w}}, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for i := range 30 {
		if _, err := s.Append(context.Background(), &audit.Record{Kind: audit.KindDecision, Tenant: "acme", RequestID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s.Close()
	res, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{w}})
	if err != nil || !res.OK() || res.Witnesses[0].Closed != 1 {
		t.Fatalf("clean: %v %+v", err, res)
	}

	msgs, _ := rdb.XRange(context.Background(), audit.StreamKey("acme"), "-", "+").Result()
	for _, m := range msgs[20:] {
		rdb.XDel(context.Background(), audit.StreamKey("acme"), m.ID)
	}
	rec, _, _ := audit.ParseMessage(msgs[19])
	rdb.HSet(context.Background(), audit.HeadsKey("acme"), "proxy-a", fmt.Sprintf("%d:%s", rec.Seq, rec.Hash))
	plain, err := audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{})
	if err != nil || !plain.OK() {
		t.Fatalf("without the witness the cut should pass unseen (issue 14): %v %v", err, plain.Problems())
	}
	res, err = audit.VerifyAll(context.Background(), rdb, audit.VerifyAllOptions{Witnesses: []audit.Witness{w}})
	if err != nil || res.OK() || res.First().Kind != audit.ProblemTailCut {
		t.Fatalf("cut tail through the HTTP witness: %v %v", err, res.Problems())
	}
}

// A witness that accepts connections and never answers (the silent
// network) costs the writer nothing: every record is still written, a
// second witness still gets every statement, and Run still stops.
func TestSilentWitnessDoesNotHoldWrites(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c // read nothing, answer nothing
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for len(held) > 0 {
			(<-held).Close()
		}
	})
	silent, _ := audit.OpenWitness("http://"+ln.Addr().String(), "")
	local, _ := audit.NewDirWitness(t.TempDir(), audit.DirWitnessOptions{})
	reg := prometheus.NewRegistry()
	s, err := audit.NewStream(rdb, audit.StreamConfig{WriterID: "proxy-a", CheckpointInterval: 10 * time.Millisecond,
		WitnessTimeout: 100 * time.Millisecond, ShutdownTimeout: time.Second, Witnesses: []audit.Witness{silent, local}}, quiet(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for i := range 100 {
		if _, err := s.Append(context.Background(), &audit.Record{Kind: audit.KindDecision, Tenant: "acme", RequestID: fmt.Sprint(i)}); err != nil {
			t.Fatalf("append with a silent witness: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := local.State("proxy-a")
		if st != nil && st.Streams["acme"].Seq > 100 { // 100 records, then the checkpoint sealing them
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the local witness did not get the statements while the other was silent: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop with a silent witness")
	}
	st, _ := local.State("proxy-a")
	if st == nil || !st.Closed {
		t.Fatalf("the local witness has no closing statement: %+v", st)
	}
	mfs, _ := reg.Gather()
	failed := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "passport_audit_witness_statements_total" {
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["result"] == "failed" && strings.HasPrefix(labels["witness"], "http://") {
					failed += m.GetCounter().GetValue()
				}
			}
		}
	}
	if failed == 0 {
		t.Error("failed deliveries to the silent witness not counted")
	}
}

// The shipped example loads strictly and validates.
func TestExampleConfig(t *testing.T) {
	cfg := witness.Default()
	if err := config.Load("../../examples/witness.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg != (func() witness.Config { d := witness.Default(); d.Dir = "/var/lib/passport-witness"; return d }()) {
		t.Errorf("example differs from the defaults: %+v", cfg)
	}
	var bad witness.Config
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "dir") {
		t.Errorf("empty config: %v", err)
	}
}
