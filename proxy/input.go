package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The policy input document (policies/README.md): the call as the policy
// sees it, built once per call from what the steps of deciding left on it.

// input is the policy input document, as Go (for the audit record) and as
// an OPA value (for evaluation).
type input struct {
	doc   inputDoc
	value ast.Value
}

// inputDoc is the policy input document, version 1 (policies/README.md).
// Passport is json.Marshal of the passport's payload (Verified.payloadJSON),
// so valid and compact JSON; appendJSON copies it as it is.
type inputDoc struct {
	Version  int             `json:"version"`
	Time     string          `json:"time"`
	Tenant   string          `json:"tenant"`
	Action   string          `json:"action"`
	Resource string          `json:"resource"`
	Route    inputRoute      `json:"route"`
	Request  inputRequest    `json:"request"`
	Passport json.RawMessage `json:"passport"`
	Agent    inputAgent      `json:"agent"`
	// Approval and Budgets are set when the call presents an approval and
	// when budgets count it (approval.go, budget.go).
	Approval *inputApproval         `json:"approval,omitempty"`
	Budgets  map[string]inputBudget `json:"budgets,omitempty"`
	MCP      *inputMCP              `json:"mcp,omitempty"` // MCP routes only (mcp.go)
}

type inputRoute struct {
	Name       string `json:"name"`
	Template   string `json:"template"`
	Tenant     string `json:"tenant"`
	Production bool   `json:"production"`
}

// inputRequest is the request part of the input. Body is the request body
// as received, set only once decodeBody has accepted it, so a valid JSON
// text (whitespace and all), or nullJSON: appendJSON relies on that and
// does not check it again.
type inputRequest struct {
	ID      string              `json:"id"`
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Params  map[string]string   `json:"params"`
	Query   map[string][]string `json:"query"`
	Headers map[string]string   `json:"headers"`
	Body    json.RawMessage     `json:"body"`
}

type inputAgent struct {
	ID         string  `json:"id"`
	Name       string  `json:"name"`
	Type       string  `json:"type"`
	TrustLevel string  `json:"trust_level"`
	Reputation float64 `json:"reputation"`
	Blocked    bool    `json:"blocked"`
}

var nullJSON = json.RawMessage("null")

// Errors of building the policy input. The call is then denied: no part
// of the input is replaced by null or {}, which the policy would judge as
// if the agent had sent them.
var (
	errInputReputation = errors.New("the reputation is not a finite number")
	errInputBody       = errors.New("the body cannot be a policy value")
)

// buildInput is the policy input of the call: the document (for the audit
// record) and its OPA value (for evaluation). On an error the document is
// still returned, without its value, for the record of the refusal.
func (p *Proxy) buildInput(r *http.Request, c *call, rt *route, params map[string]string, query url.Values,
	vp *Verified, reputation float64, now time.Time, body any, bodyRaw json.RawMessage) (*input, error) {
	cl := vp.Claims
	headers := make(map[string]string, len(p.cfg.PolicyHeaders))
	for _, h := range p.cfg.PolicyHeaders {
		if v := r.Header.Get(h); v != "" {
			headers[h] = v
		}
	}
	if query == nil {
		query = url.Values{}
	}
	in := &input{doc: inputDoc{
		Version:  1,
		Time:     now.UTC().Format(time.RFC3339Nano),
		Tenant:   cl.Tenant,
		Action:   rt.Action,
		Resource: rt.resource(params),
		Route:    inputRoute{Name: rt.Name, Template: rt.tpl.raw, Tenant: rt.Tenant, Production: rt.production},
		Request: inputRequest{ID: c.id, Method: r.Method, Path: c.path, Params: params, Query: query,
			Headers: headers, Body: bodyRaw},
		Passport: vp.payloadJSON(),
		Agent: inputAgent{ID: cl.Agent.ID, Name: cl.Agent.Name, Type: cl.Agent.Type,
			TrustLevel: string(cl.Agent.TrustLevel), Reputation: reputation},
	}}
	if in.doc.Request.Body == nil {
		in.doc.Request.Body = nullJSON
	}
	mcpTerm := c.mcpInput(&in.doc) // a tools/call: its tool, resource and arguments (as the body)
	pt, err := vp.terms()
	if err != nil {
		return in, err
	}
	if math.IsNaN(reputation) || math.IsInf(reputation, 0) {
		return in, errInputReputation
	}
	d := &in.doc
	queryTerm := tEmptyObject
	if len(query) > 0 {
		obj := ast.NewObject()
		for k, vs := range query {
			ts := make([]*ast.Term, len(vs))
			for i, v := range vs {
				ts[i] = ast.StringTerm(v)
			}
			obj.Insert(ast.StringTerm(k), ast.ArrayTerm(ts...))
		}
		queryTerm = ast.NewTerm(obj)
	}
	bodyTerm := tNull
	if body != nil {
		v, err := ast.InterfaceToValue(body)
		if err != nil {
			return in, fmt.Errorf("%w: %w", errInputBody, err)
		}
		bodyTerm = ast.NewTerm(v)
	}
	in.value = ast.NewObject(
		ast.Item(kVersion, tOne),
		ast.Item(kTime, ast.StringTerm(d.Time)),
		ast.Item(kTenant, pt.tenant),
		ast.Item(kAction, rt.actionTerm),
		ast.Item(kResource, ast.StringTerm(d.Resource)),
		ast.Item(kRoute, rt.inputTerm),
		ast.Item(kRequest, ast.ObjectTerm(
			ast.Item(kID, ast.StringTerm(d.Request.ID)),
			ast.Item(kMethod, ast.StringTerm(d.Request.Method)),
			ast.Item(kPath, ast.StringTerm(d.Request.Path)),
			ast.Item(kParams, stringsTerm(params)),
			ast.Item(kQuery, queryTerm),
			ast.Item(kHeaders, stringsTerm(headers)),
			ast.Item(kBody, bodyTerm),
		)),
		ast.Item(kPassport, pt.payload),
		ast.Item(kAgent, ast.ObjectTerm(
			ast.Item(kID, pt.agentID),
			ast.Item(kName, pt.agentName),
			ast.Item(kType, pt.agentType),
			ast.Item(kTrustLevel, pt.trustLevel),
			ast.Item(kReputation, ast.FloatNumberTerm(d.Agent.Reputation)),
			ast.Item(kBlocked, tFalse),
		)),
	)
	p.escalationInput(c, in)
	if mcpTerm != nil {
		in.value.(ast.Object).Insert(kMCP, mcpTerm)
	}
	return in, nil
}

// stringsTerm is m as an OPA object; the shared empty object when m is
// empty.
func stringsTerm(m map[string]string) *ast.Term {
	if len(m) == 0 {
		return tEmptyObject
	}
	obj := ast.NewObject()
	for k, v := range m {
		obj.Insert(ast.StringTerm(k), ast.StringTerm(v))
	}
	return ast.NewTerm(obj)
}

// Terms shared by every input document. OPA treats input as read-only and
// guards its lazily sorted keys with sync.Once, so sharing is safe and
// saves an allocation per key per call.
var (
	kVersion, kTime, kTenant, kAction, kResource = ast.StringTerm("version"), ast.StringTerm("time"), ast.StringTerm("tenant"), ast.StringTerm("action"), ast.StringTerm("resource")
	kRoute, kRequest, kPassport, kAgent          = ast.StringTerm("route"), ast.StringTerm("request"), ast.StringTerm("passport"), ast.StringTerm("agent")
	kID, kMethod, kPath, kParams, kQuery         = ast.StringTerm("id"), ast.StringTerm("method"), ast.StringTerm("path"), ast.StringTerm("params"), ast.StringTerm("query")
	kHeaders, kBody, kName, kType, kTrustLevel   = ast.StringTerm("headers"), ast.StringTerm("body"), ast.StringTerm("name"), ast.StringTerm("type"), ast.StringTerm("trust_level")
	kReputation, kBlocked, kTemplate             = ast.StringTerm("reputation"), ast.StringTerm("blocked"), ast.StringTerm("template")
	kProduction                                  = ast.StringTerm("production")
	tOne, tFalse, tNull, tEmptyObject            = ast.IntNumberTerm(1), ast.BooleanTerm(false), ast.NullTerm(), ast.ObjectTerm()
)

// routeTerm is the constant "route" part of the input for a route.
func routeTerm(r *route) *ast.Term {
	return ast.ObjectTerm(
		ast.Item(kName, ast.StringTerm(r.Name)),
		ast.Item(kTemplate, ast.StringTerm(r.tpl.raw)),
		ast.Item(kTenant, ast.StringTerm(r.Tenant)),
		ast.Item(kProduction, ast.BooleanTerm(r.production)),
	)
}

// passportTerms are the parts of the policy input that come from the
// passport alone, as OPA terms: built once per verified passport and shared
// by every call that shows it (OPA never writes to its input).
type passportTerms struct {
	payload, tenant, agentID, agentName, agentType, trustLevel *ast.Term
}

// payloadJSON and terms are the claims as the policy sees them, computed
// once per verified passport. terms fails when the claims cannot be put
// into the input (a number past OPA's range, say): every call with that
// passport is then denied, never judged on a stand-in.
func (v *Verified) payloadJSON() json.RawMessage {
	v.once()
	return v.pjson
}

func (v *Verified) terms() (*passportTerms, error) {
	v.once()
	if v.inputErr != nil {
		return nil, v.inputErr
	}
	return &v.pterms, nil
}

func (v *Verified) once() {
	v.inputMu.Do(func() {
		pjson, err := json.Marshal(v.Payload)
		if err != nil {
			v.inputErr = fmt.Errorf("passport claims as JSON: %w", err)
			return
		}
		payload, err := ast.InterfaceToValue(v.Payload)
		if err != nil {
			v.inputErr = fmt.Errorf("passport claims as a policy value: %w", err)
			return
		}
		v.pjson = pjson
		cl := v.Claims
		v.pterms = passportTerms{payload: ast.NewTerm(payload), tenant: ast.StringTerm(cl.Tenant),
			agentID: ast.StringTerm(cl.Agent.ID), agentName: ast.StringTerm(cl.Agent.Name),
			agentType: ast.StringTerm(cl.Agent.Type), trustLevel: ast.StringTerm(string(cl.Agent.TrustLevel))}
	})
}
