package authority

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/agentpassport/passport/passport"
)

// Token exchange (RFC 8693): an agent (the actor) trades the passport of
// another agent of its tenant (the subject token) for a passport of its
// own that says on whose behalf it acts. The new passport:
//
//   - names the actor in sub, client_id and agent, and the chain in act
//     (act.sub is the subject passport's holder, nested down to the root)
//     and delegation (depth, chain, root, and each exchanged passport);
//   - only narrows: scope, authorization_details, task and audience are
//     subsets of the subject passport's (and of the actor's own
//     capabilities), exp is no later, the tenant is the same, and the
//     trust level is no higher than the actor's own (ceiling and
//     reputation), the subject passport's, any link's, or the subject
//     agent's live level;
//   - exists only if the subject passport passes the strict verifier, it
//     and every passport before it in its chain is unrevoked, every agent
//     in the chain is neither blocked nor deleted, the chain stays within
//     delegation.max_depth, and every agent the actor would act for lists
//     it (its id, or type:<its type>) in may_delegate_to.
//
// DPoP: the new passport is bound to the key of the request's DPoP proof,
// which is the actor's. A proof is required when the actor is registered
// with require_dpop, when the subject passport is bound (binding is never
// dropped along a chain), and when the actor authenticates with a bound
// actor_token (the proof must then be by that token's key).

// errExchange is an RFC 8693 §2.2.2 error: the subject or actor token is
// invalid or unacceptable by policy.
func errExchange(desc string) *oauthError {
	return &oauthError{http.StatusBadRequest, "invalid_request", desc, 0}
}

func (a *Authority) exchange(ctx context.Context, r *http.Request, f *tokenForm) (*issued, error) {
	switch {
	case f.SubjectToken == "":
		return nil, errExchange("subject_token is required")
	case f.SubjectTokenType != passport.TokenTypeAccessToken:
		return nil, errExchange("subject_token_type must be " + passport.TokenTypeAccessToken)
	case f.ActorToken != "" && f.ActorTokenType != passport.TokenTypeAccessToken:
		return nil, errExchange("actor_token_type must be " + passport.TokenTypeAccessToken)
	case f.ActorToken == "" && f.ActorTokenType != "":
		return nil, errExchange("actor_token_type without actor_token")
	case f.RequestedTokenType != "" && f.RequestedTokenType != passport.TokenTypeAccessToken:
		return nil, errExchange("requested_token_type: only " + passport.TokenTypeAccessToken + " can be issued")
	}
	if err := a.Init(ctx); err != nil {
		return nil, err
	}
	actor, actorTok, err := a.exchangeActor(ctx, r, f)
	if err != nil {
		return nil, err
	}
	if f.Tenant != "" && f.Tenant != actor.Tenant {
		return nil, &oauthError{http.StatusBadRequest, "invalid_target", "this client may not obtain passports for tenant " + safeTenant(f.Tenant), 0}
	}
	if actor.Blocked {
		return nil, &oauthError{http.StatusBadRequest, "unauthorized_client", "agent is blocked: " + blockedDesc(actor), 0}
	}
	subj, subjAgent, err := a.exchangeSubject(ctx, f.SubjectToken, actor)
	if err != nil {
		return nil, err
	}
	g, err := a.narrowExchange(actor, subj, f)
	if err != nil {
		return nil, err
	}
	g.maxExp = subj.ExpiresAt.Time
	g.maxTrust = subj.Agent.TrustLevel.Min(subjAgent.Trust.Min(a.cfg.Reputation.allowed(subjAgent.Reputation.At(a.now()))))
	g.act = &passport.Actor{Sub: subj.Subject, Act: subj.Act}
	link := passport.DelegationLink{Sub: subj.Subject, Name: subj.Agent.Name, Type: subj.Agent.Type, TrustLevel: subj.Agent.TrustLevel, JTI: subj.ID}
	d := &passport.Delegation{Depth: 1, Root: subj.Subject, Chain: []string{subj.Subject, actor.ID}, Links: []passport.DelegationLink{link}}
	if p := subj.Delegation; p != nil {
		d = &passport.Delegation{
			Depth: p.Depth + 1, Root: p.Root,
			Chain: append(slices.Clone(p.Chain), actor.ID),
			Links: append(slices.Clone(p.Links), link),
		}
	}
	for _, l := range d.Links {
		g.maxTrust = g.maxTrust.Min(l.TrustLevel)
	}
	g.delegation = d
	if f.external != nil {
		f.external.capGrant(g)
	}

	if subj.BoundCert() != "" || actorTok != nil && actorTok.BoundCert() != "" {
		// The delegated passport could be bound to no certificate the
		// subject's holder showed here: refused rather than loosened.
		return nil, errInvalidRequest("a certificate-bound passport cannot be exchanged")
	}
	need := dpopNeed{required: actor.RequireDPoP, why: "this agent is registered with require_dpop"}
	switch {
	case actorTok != nil && actorTok.Cnf != nil:
		need = dpopNeed{required: true, why: "the actor_token is DPoP-bound", jkt: actorTok.Cnf.JKT}
	case subj.Cnf != nil:
		need = dpopNeed{required: true, why: "the subject passport is DPoP-bound, so the delegated one must be too"}
	}
	if g.jkt, err = a.checkDPoP(ctx, r, need); err != nil {
		return nil, err
	}
	if err := a.takeIssuance(ctx, actor); err != nil {
		return nil, err
	}
	tok, err := a.issue(ctx, actor, g)
	if err != nil {
		return nil, err
	}
	tok.issuedType = passport.TokenTypeAccessToken
	a.m.exchanges.WithLabelValues(strconv.Itoa(d.Depth)).Inc()
	return tok, nil
}

// exchangeActor authenticates the acting agent: by client credentials
// (any method the endpoint supports), by its own passport (actor_token),
// or by both, which must then name the same agent.
func (a *Authority) exchangeActor(ctx context.Context, r *http.Request, f *tokenForm) (*agentRecord, *passport.Claims, error) {
	var agent *agentRecord
	if f.method != authActorToken {
		var err error
		if agent, err = a.authenticate(ctx, f, sourceOf(r, a.trusted)); err != nil {
			return nil, nil, err
		}
	}
	if f.ActorToken == "" {
		return agent, nil, nil
	}
	c, err := a.verify(ctx, f.ActorToken)
	if err != nil {
		return nil, nil, errExchange("actor_token is not a valid passport: " + authDesc(err))
	}
	if c.Delegated() {
		return nil, nil, errExchange("actor_token must be the acting agent's own passport, not a delegated one")
	}
	if (agent != nil && agent.ID != c.Subject) || (f.ClientID != "" && f.ClientID != c.Subject) {
		return nil, nil, errExchange("actor_token names another agent than the client")
	}
	_, err = a.rdb.ZScore(ctx, passport.RevokedKey, c.ID).Result()
	switch {
	case err == nil:
		return nil, nil, errExchange("actor_token has been revoked")
	case !redisNil(err):
		return nil, nil, fmt.Errorf("check actor_token: %w", err)
	}
	if agent == nil {
		if agent, err = a.getAgent(ctx, c.Tenant, c.Subject); errors.Is(err, ErrAgentNotFound) {
			return nil, nil, errExchange("the actor_token's agent no longer exists")
		} else if err != nil {
			return nil, nil, err
		}
	}
	return agent, c, nil
}

// exchangeSubject verifies the subject passport and everything its
// validity depends on, in one Redis round trip: its jti and every link's
// unrevoked, its agent and every link's neither blocked nor deleted, and
// each of them allowing actor to act on its behalf.
func (a *Authority) exchangeSubject(ctx context.Context, raw string, actor *agentRecord) (*passport.Claims, *agentRecord, error) {
	c, err := a.verify(ctx, raw)
	if err != nil {
		return nil, nil, errExchange("subject_token is not a valid passport: " + authDesc(err))
	}
	// No leeway here: a passport past its exp is not handed on, even if a
	// verifier would still accept it for a few seconds.
	if !c.ExpiresAt.After(a.now()) {
		return nil, nil, errExchange("subject_token has expired")
	}
	if c.Tenant != actor.Tenant {
		return nil, nil, errExchange("subject_token belongs to another tenant")
	}
	var links []passport.DelegationLink
	depth := 1
	if c.Delegation != nil {
		links, depth = c.Delegation.Links, c.Delegation.Depth+1
	}
	if c.Subject == actor.ID || (c.Delegation != nil && slices.Contains(c.Delegation.Chain, actor.ID)) {
		return nil, nil, errExchange("the acting agent is already in the subject passport's chain")
	}
	if depth > a.cfg.Delegation.MaxDepth {
		return nil, nil, errExchange(fmt.Sprintf("the delegation chain would be %d deep; this authority allows %d", depth, a.cfg.Delegation.MaxDepth))
	}
	pipe := a.rdb.Pipeline()
	revoked := []*redis.FloatCmd{pipe.ZScore(ctx, passport.RevokedKey, c.ID)}
	for _, l := range links {
		revoked = append(revoked, pipe.ZScore(ctx, passport.RevokedKey, l.JTI))
	}
	subjCmd := pipe.HGetAll(ctx, passport.AgentKey(c.Tenant, c.Subject))
	linkCmds := make([]*redis.SliceCmd, len(links))
	for i, l := range links {
		linkCmds[i] = pipe.HMGet(ctx, passport.AgentKey(c.Tenant, l.Sub), passport.FieldBlocked, fieldMayDelegateTo)
	}
	if _, err := pipe.Exec(ctx); !redisNil(err) {
		return nil, nil, fmt.Errorf("check subject_token: %w", err)
	}
	for _, rc := range revoked {
		switch err := rc.Err(); {
		case err == nil:
			return nil, nil, errExchange("subject_token, or a passport before it in its chain, has been revoked")
		case !redisNil(err):
			return nil, nil, fmt.Errorf("check subject_token: %w", err)
		}
	}
	subj, err := decodeAgent(subjCmd.Val())
	if errors.Is(err, ErrAgentNotFound) {
		return nil, nil, errExchange("the subject agent no longer exists")
	}
	if err != nil {
		return nil, nil, err
	}
	if subj.Blocked {
		return nil, nil, errExchange("the subject agent is blocked")
	}
	if !subj.allowsDelegationTo(actor) {
		return nil, nil, errExchange("the subject agent does not allow this agent to act on its behalf (may_delegate_to)")
	}
	for _, lc := range linkCmds {
		v := lc.Val()
		blocked, _ := v[0].(string)
		if blocked != "0" { // blocked, or deleted (no hash)
			return nil, nil, errExchange("an agent earlier in the subject passport's chain is blocked or deleted")
		}
		var list []string
		if s, _ := v[1].(string); s != "" {
			if err := json.Unmarshal([]byte(s), &list); err != nil {
				return nil, nil, fmt.Errorf("check subject_token chain: %w", err)
			}
		}
		if !mayDelegateTo(list, actor) {
			return nil, nil, errExchange("an agent earlier in the subject passport's chain does not allow this agent to act on its behalf (may_delegate_to)")
		}
	}
	return c, subj, nil
}

// narrowExchange computes what the delegated passport may do: never more
// than the subject passport grants and the actor is registered for.
func (a *Authority) narrowExchange(actor *agentRecord, s *passport.Claims, f *tokenForm) (*grant, error) {
	g := &grant{}
	for _, aud := range s.Audience {
		if slices.Contains(a.cfg.Audiences, aud) {
			g.audience = aud
			break
		}
	}
	if f.Audience != "" {
		if !slices.Contains(s.Audience, f.Audience) || !slices.Contains(a.cfg.Audiences, f.Audience) {
			return nil, &oauthError{http.StatusBadRequest, "invalid_target", "the subject passport is not valid for this resource/audience", 0}
		}
		g.audience = f.Audience
	}
	if g.audience == "" {
		return nil, &oauthError{http.StatusBadRequest, "invalid_target", "the subject passport names no audience this authority issues for", 0}
	}
	held := s.Actions()
	var allowed []string
	for _, act := range held {
		if slices.Contains(actor.Capabilities, act) {
			allowed = append(allowed, act)
		}
	}
	if f.HasScope {
		req := strings.Fields(f.Scope)
		if len(req) == 0 {
			return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "scope is empty", 0}
		}
		for _, sc := range req {
			if !slices.Contains(held, sc) {
				return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "scope " + safeAction(sc) + " is not granted by the subject passport", 0}
			}
			if !slices.Contains(actor.Capabilities, sc) {
				return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "scope " + safeAction(sc) + " is not registered for this agent", 0}
			}
		}
		allowed = req
	}
	slices.Sort(allowed)
	allowed = slices.Compact(allowed)

	// The task: the subject's, unless the request names a narrower one.
	// A task is one piece of work; a delegate works on the same one.
	var task *passport.Task
	if s.Task != nil {
		t := *s.Task
		t.Actions = slices.Clone(s.Task.Actions)
		task = &t
	}
	if f.Task != "" {
		t, err := parseTask(f.Task)
		if err != nil {
			return nil, err
		}
		if p := s.Task; p != nil {
			switch {
			case t.ID != p.ID:
				return nil, errInvalidRequest("task must be the subject passport's task (" + strconv.Quote(p.ID) + ")")
			case p.Target != "" && t.Target != p.Target:
				return nil, errInvalidRequest("task target must be the subject passport's (" + strconv.Quote(p.Target) + ")")
			}
			if t.Purpose == "" {
				t.Purpose = p.Purpose
			}
			if len(t.Actions) == 0 {
				t.Actions = slices.Clone(p.Actions)
			}
			for _, act := range t.Actions {
				if len(p.Actions) > 0 && !slices.Contains(p.Actions, act) {
					return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "task action " + safeAction(act) + " is not in the subject passport's task", 0}
				}
			}
		}
		for _, act := range t.Actions {
			if !slices.Contains(allowed, act) {
				return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "task action " + safeAction(act) + " is not granted to this agent", 0}
			}
		}
		task = t
	}
	if task != nil && len(task.Actions) > 0 {
		// The task's actions become the grant, as in client credentials;
		// an inherited task loses what this agent may not do.
		var acts []string
		for _, act := range task.Actions {
			if slices.Contains(allowed, act) {
				acts = append(acts, act)
			}
		}
		slices.Sort(acts)
		acts = slices.Compact(acts)
		if len(acts) == 0 {
			return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "this agent may do none of the task's actions", 0}
		}
		task.Actions, allowed = acts, acts
	}
	g.task = task

	// Authorization details: each of the subject's entries, cut down to
	// the allowed actions and the chosen audience, and to the task target.
	var base []passport.AuthorizationDetail
	for _, d := range s.AuthorizationDetails {
		var acts []string
		for _, act := range d.Actions {
			if slices.Contains(allowed, act) {
				acts = append(acts, act)
			}
		}
		if len(acts) == 0 || (len(d.Locations) > 0 && !slices.Contains(d.Locations, g.audience)) {
			continue
		}
		ident := d.Identifier
		if task != nil && task.Target != "" {
			if ident != "" && ident != task.Target {
				continue // an entry for another resource than the task's
			}
			ident = task.Target
		}
		base = append(base, passport.AuthorizationDetail{Type: d.Type, Actions: acts, Locations: []string{g.audience}, Identifier: ident})
	}
	g.details = base
	if f.AuthzDetails != "" {
		ds, err := parseDetails(f.AuthzDetails)
		if err != nil {
			return nil, err
		}
		for i := range ds {
			d := &ds[i]
			for _, loc := range d.Locations {
				if loc != g.audience {
					return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details", "locations must name the passport's audience", 0}
				}
			}
			d.Locations = []string{g.audience}
			covered := false
			for _, b := range base {
				if (b.Identifier == "" || b.Identifier == d.Identifier || d.Identifier == "") && subset(d.Actions, b.Actions) {
					if d.Identifier == "" {
						d.Identifier = b.Identifier
					}
					covered = true
					break
				}
			}
			if !covered {
				return nil, &oauthError{http.StatusBadRequest, "invalid_authorization_details",
					"each entry must be within one of the subject passport's authorization_details (actions, location, identifier)", 0}
			}
		}
		g.details = ds
	}
	var union []string
	for _, d := range g.details {
		union = append(union, d.Actions...)
	}
	slices.Sort(union)
	g.actions = slices.Compact(union)
	if len(g.actions) == 0 {
		return nil, &oauthError{http.StatusBadRequest, "invalid_scope", "nothing to grant: the subject passport grants none of this agent's capabilities here", 0}
	}
	return g, nil
}

func subset(xs, of []string) bool {
	for _, x := range xs {
		if !slices.Contains(of, x) {
			return false
		}
	}
	return true
}

// authDesc is the fixed, safe description of a verifier refusal.
func authDesc(err error) string {
	var ae *passport.AuthError
	if errors.As(err, &ae) {
		return ae.Description
	}
	return "it cannot be verified"
}
