package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/agentpassport/passport/audit"
	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/healer"
	"github.com/agentpassport/passport/internal/agentcall"
	"github.com/agentpassport/passport/internal/assemble"
	"github.com/agentpassport/passport/internal/config"
	"github.com/agentpassport/passport/internal/redisx"
	"github.com/agentpassport/passport/internal/stack"
	"github.com/agentpassport/passport/passport"
)

func (a *app) healerCmd() *cobra.Command {
	var (
		cfgPath, listen string
		ao              agentOpts
		tf              tlsFlags
	)
	cmd := &cobra.Command{
		Use:   "healer",
		Short: "Run the auto-healer: monitor health URLs, open incidents, repair through the proxy",
		Long: `Run the auto-healer for one tenant.

It polls the configured health URLs (default: every service the control API lists
for the tenant, discovered through the proxy), opens an incident when a check
fails (rise/fall hysteresis), carries out the playbook through the proxy with a
passport scoped to the incident, and marks the incident RESOLVED or ESCALATED.
Incidents are stored in Redis and served at --listen:
  GET /v1/tenants/{tenant}/incidents, GET /v1/tenants/{tenant}/incidents/{id}
(Bearer PASSPORT_ADMIN_TOKEN), with /metrics and /healthz.

Credentials: --data DIR (the healer agent of the tenant in DIR/demo.json), or
PASSPORT_CLIENT_ID and PASSPORT_CLIENT_SECRET, or else it registers a new healer
agent with PASSPORT_ADMIN_TOKEN.

TLS: the incidents API serves TLS with tls.cert_file and tls.key_file (--tls-cert,
--tls-key, PASSPORT_TLS_CERT_FILE, PASSPORT_TLS_KEY_FILE); https proxy, authority and
health URLs are verified with --ca-file (PASSPORT_CA_FILE), else the system's roots.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			cfg := healer.Default()
			if err := config.Load(cfgPath, &cfg); err != nil {
				return err
			}
			if cmd.Flags().Changed("listen") || cfg.Listen == "" {
				cfg.Listen = listen
			}
			tf.apply(a, &cfg.TLS)
			ctx := cmd.Context()
			env, err := a.agentEnv(ctx, ao, passport.TypeHealer, cfg.Tenant, cfg.ProxyURL, log)
			if err != nil {
				return err
			}
			cfg.Tenant, cfg.ProxyURL = env.tenant, env.proxyURL
			if cfg.Announcements.URL == "" && ao.data != "" {
				// The demo fleet announces its changes (see docs/demo.md).
				if d, err := loadAgentDemoFile(ao.data); err == nil && d.URLs.Fleet != "" {
					cfg.Announcements.URL = d.URLs.Fleet + "/events?tenant=" + url.QueryEscape(env.tenant)
				}
			}
			if len(cfg.Checks) == 0 {
				if cfg.Checks, err = a.discoverChecks(ctx, env); err != nil {
					return err
				}
			}
			return a.runHealer(ctx, cfg, env, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "healer YAML (healer.Config; see examples/healer.yaml)")
	f.StringVar(&listen, "listen", healer.DefaultListen, "incidents API and /metrics address")
	ao.register(f)
	tf.register(f)
	return cmd
}

func (a *app) runHealer(ctx context.Context, cfg healer.Config, env *agentSetup, log *slog.Logger) error {
	var rep healer.Reputation
	if env.admin != nil {
		rep = agentcall.AdminReputation{Admin: env.admin, Tenant: env.tenant, AgentID: env.clientID}
	} else {
		log.Warn("no admin token: remediation outcomes are not reported to reputation")
	}
	tc, err := a.clientTLS()
	if err != nil {
		return err
	}
	svc, _, err := assemble.Healer(ctx, cfg, a.assembleEnv(log, env), assemble.HealerDeps{
		Agent:      assemble.Agent{Passports: env.passports, Redis: a.redisConfig(firstNonEmpty(env.redisURL, redisx.DefaultURL)), TLS: tc},
		Reputation: rep, AdminToken: env.adminToken,
	})
	if err != nil {
		return fmt.Errorf("healer: %w", err)
	}
	return svc.Run(ctx)
}

// assembleEnv is the assembly environment of an agent command: the
// logger, its witnesses, and with --data DIR the writer identities kept
// in DIR (those of `passport up`'s own writers live there too, under
// other names).
func (a *app) assembleEnv(log *slog.Logger, env *agentSetup) assemble.Env {
	e := assemble.Env{Logger: log, Witnesses: env.witnesses, WitnessToken: a.getenv("PASSPORT_WITNESS_TOKEN")}
	if env.dataDir != "" {
		e.KeyDir = filepath.Join(env.dataDir, stack.AuditKeysDir)
		e.SpoolDir = filepath.Join(env.dataDir, "spool")
	}
	return e
}

// discoverChecks lists the tenant's services through the proxy and checks
// each one's health URL.
func (a *app) discoverChecks(ctx context.Context, env *agentSetup) ([]healer.CheckConfig, error) {
	tok, err := env.passports.Passport(ctx, nil, []string{"service.list"})
	if err != nil {
		return nil, fmt.Errorf("discover services: %w", err)
	}
	hc, err := a.httpClient(5 * time.Second)
	if err != nil {
		return nil, err
	}
	c := &agentcall.Client{BaseURL: env.proxyURL, HTTP: hc}
	resp, err := c.Do(ctx, tok, http.MethodGet, "/services", nil)
	if err != nil {
		return nil, fmt.Errorf("discover services through %s: %w", env.proxyURL, err)
	}
	var list struct {
		Services []struct {
			Name      string `json:"name"`
			Tenant    string `json:"tenant"`
			HealthURL string `json:"health_url"`
		} `json:"services"`
	}
	if err := json.Unmarshal(resp.Body, &list); err != nil {
		return nil, fmt.Errorf("discover services: %w", err)
	}
	var out []healer.CheckConfig
	for _, s := range list.Services {
		if s.Tenant == env.tenant && s.HealthURL != "" {
			out = append(out, healer.CheckConfig{Target: s.Name, URL: s.HealthURL})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("discover services: none for tenant %s; configure checks", env.tenant)
	}
	return out, nil
}

// --- agent wiring shared by healer and chaos ---

// agentOpts are the flags every agent subcommand takes.
type agentOpts struct {
	data, tenant, proxy, authority, credentials string
	witness                                     []string
}

func (o *agentOpts) register(f *pflag.FlagSet) {
	f.StringVar(&o.data, "data", "", "directory of a running 'passport up' (reads DIR/demo.json for URLs, Redis and credentials)")
	f.StringVar(&o.tenant, "tenant", "", "tenant of the agent (default: config, else acme)")
	f.StringVar(&o.proxy, "proxy", "", "proxy URL (default: demo.json, PASSPORT_PROXY_URL, config, http://127.0.0.1:8080)")
	f.StringVar(&o.authority, "authority", "", "authority URL (default: demo.json, PASSPORT_AUTHORITY_URL, http://127.0.0.1:8081)")
	f.StringVar(&o.credentials, "credentials", "", "keep the agent's identity across restarts in this file (0600): read it, or register\n"+
		"an agent with PASSPORT_ADMIN_TOKEN and write it (default: PASSPORT_CREDENTIALS_FILE)")
	f.StringArrayVar(&o.witness, "witness", nil, "audit witness: a directory or an http(s):// URL of passport witness (repeatable; default: demo.json, PASSPORT_WITNESS)")
	// --ca-file (PASSPORT_CA_FILE) is global: it verifies the proxy, the
	// authority and https witnesses.
}

// agentDemoFile is the part of `passport up`'s DIR/demo.json agents read.
type agentDemoFile struct {
	URLs struct {
		Proxy     string `json:"proxy"`
		Authority string `json:"authority"`
		Fleet     string `json:"fleet"`
	} `json:"urls"`
	RedisURL   string `json:"redis_url"`
	AdminToken string `json:"admin_token"`
	Witness    string `json:"witness"`
	Agents     []struct {
		Name         string `json:"name"`
		Type         string `json:"type"`
		Tenant       string `json:"tenant"`
		TrustLevel   string `json:"trust_level"`
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	} `json:"agents"`
}

func loadAgentDemoFile(dir string) (*agentDemoFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		return nil, fmt.Errorf("--data %s: %w", dir, err)
	}
	var d agentDemoFile
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("--data %s: demo.json: %w", dir, err)
	}
	return &d, nil
}

// agentSetup is a resolved agent identity and where to reach everything.
type agentSetup struct {
	tenant, proxyURL, authorityURL, redisURL, adminToken string
	clientID                                             string
	// dataDir is --data DIR ("" without).
	dataDir   string
	witnesses []audit.Witness
	passports agentcall.Passports
	admin     *client.Admin
}

// agentEnv resolves an agent of agentType: flags and --data first, then
// the environment, then the config file's values, then defaults. Client
// secrets are never taken from flags (they would show in ps and shell
// history): only from demo.json or PASSPORT_CLIENT_SECRET.
func (a *app) agentEnv(ctx context.Context, o agentOpts, agentType, cfgTenant, cfgProxy string, log *slog.Logger) (*agentSetup, error) {
	var demo *agentDemoFile
	if o.data != "" {
		var err error
		if demo, err = loadAgentDemoFile(o.data); err != nil {
			return nil, err
		}
	}
	var dProxy, dAuth, dRedis, dAdmin, dWitness string
	if demo != nil {
		dProxy, dAuth, dRedis, dAdmin, dWitness = demo.URLs.Proxy, demo.URLs.Authority, demo.RedisURL, demo.AdminToken, demo.Witness
	}
	witnesses, err := a.writerWitnesses(o.witness, dWitness)
	if err != nil {
		return nil, err
	}
	s := &agentSetup{
		tenant:       firstNonEmpty(o.tenant, cfgTenant, "acme"),
		proxyURL:     firstNonEmpty(o.proxy, dProxy, a.getenv("PASSPORT_PROXY_URL"), cfgProxy, "http://127.0.0.1:8080"),
		authorityURL: firstNonEmpty(o.authority, dAuth, a.getenv("PASSPORT_AUTHORITY_URL"), "http://127.0.0.1:8081"),
		redisURL:     firstNonEmpty(dRedis, a.getenv("PASSPORT_REDIS_URL")),
		adminToken:   firstNonEmpty(dAdmin, a.getenv("PASSPORT_ADMIN_TOKEN")),
		witnesses:    witnesses,
		dataDir:      o.data,
	}
	opts, err := a.clientOptions()
	if err != nil {
		return nil, err
	}
	if s.adminToken != "" {
		adm, err := client.NewAdmin(s.authorityURL, passport.Secret(s.adminToken), opts)
		if err != nil {
			return nil, err
		}
		s.admin = adm
	}
	var id, secret string
	if demo != nil {
		for _, ag := range demo.Agents {
			if ag.Type == agentType && ag.Tenant == s.tenant {
				id, secret = ag.ClientID, ag.ClientSecret
				break
			}
		}
		if id == "" {
			return nil, fmt.Errorf("--data %s: no %s agent for tenant %s in demo.json", o.data, agentType, s.tenant)
		}
	} else if cid := a.getenv("PASSPORT_CLIENT_ID"); cid != "" {
		id, secret = cid, a.getenv("PASSPORT_CLIENT_SECRET")
	} else {
		var err error
		id, secret, err = agentcall.StoredOrRegistered(ctx, s.admin, firstNonEmpty(o.credentials, a.getenv("PASSPORT_CREDENTIALS_FILE")), s.tenant, agentType, log)
		if err != nil {
			return nil, err
		}
	}
	c, err := client.New(s.authorityURL, id, passport.Secret(secret), opts)
	if err != nil {
		return nil, err
	}
	s.clientID = id
	s.passports = agentcall.AuthorityPassports{Client: c}
	return s, nil
}

// agentRedis opens Redis (redisx.DefaultURL when url is "") and pings it:
// the healer and chaos refuse to act when they cannot record what they do.
func (a *app) agentRedis(ctx context.Context, url string) (redis.UniversalClient, error) {
	if url == "" {
		url = redisx.DefaultURL
	}
	rdb, err := redisx.New(a.redisConfig(url))
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("redis %s: %w", redisx.Redact(url), err)
	}
	return rdb, nil
}
