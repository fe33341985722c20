package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
)

// The answers of an MCP server, on their way back (forward.go's
// modifyResponse): a tools/list result is filtered to the tools the
// passport's holder could be allowed to call, and a tools/call's answer
// is watched, as it streams through, for its JSON-RPC result or error,
// which the outcome record notes.

// mcpListMax bounds a tools/list answer (or one event of a stream) the
// proxy filters; a larger one fails closed (502) rather than pass
// unfiltered.
const mcpListMax = 4 << 20

// mcpTapMax is how much of a tools/call answer is kept to find its result:
// the first bytes, where a JSON answer or the first events are.
const mcpTapMax = 64 << 10

var errMCPListTooLarge = errors.New("mcp: tools/list answer too large to filter")

// modifyResponse shapes the upstream's answer to an MCP call.
func (mc *mcpCall) modifyResponse(resp *http.Response) error {
	if len(mc.msgs) == 0 {
		return nil // the GET stream, the session DELETE
	}
	var lists, calls bool
	for _, m := range mc.msgs {
		lists = lists || m.method == "tools/list"
		calls = calls || m.tool != nil
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if lists && resp.StatusCode == http.StatusOK {
		// A filtered list is this passport's: no shared cache may keep it.
		h := resp.Header
		h.Set("Cache-Control", "private, no-store")
		h.Add("Vary", "Authorization")
		for _, k := range []string{"Etag", "Last-Modified", "Expires", "Age"} {
			h.Del(k)
		}
		f := &listFilter{mc: mc, seen: map[string]bool{}}
		switch mt {
		case "application/json":
			b, err := io.ReadAll(io.LimitReader(resp.Body, mcpListMax+1))
			resp.Body.Close()
			if err != nil {
				return err
			}
			if len(b) > mcpListMax {
				return errMCPListTooLarge
			}
			b = f.filterJSON(b)
			resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
			h.Set("Content-Length", strconv.Itoa(len(b)))
		case "text/event-stream":
			resp.Body = &sseFilter{rc: resp.Body, br: bufio.NewReaderSize(resp.Body, 4096), f: f}
		default:
			// Neither answer form of the transport: nothing the proxy
			// could filter passes.
			resp.Body.Close()
			return errors.New("mcp: tools/list answered as " + mt)
		}
		return nil
	}
	if calls && (mt == "application/json" || mt == "text/event-stream") {
		resp.Body = &outcomeTap{rc: resp.Body, mc: mc, sse: mt == "text/event-stream"}
	}
	return nil
}

// listFilter filters the tools/list results among JSON-RPC messages.
type listFilter struct {
	mc   *mcpCall
	seen map[string]bool // a tool's visibility, once judged
}

// filterJSON filters a JSON text holding one message or a batch of them;
// anything it cannot read it returns as it is (no list to filter in it).
func (f *listFilter) filterJSON(b []byte) []byte {
	var one map[string]json.RawMessage
	if json.Unmarshal(b, &one) == nil {
		if f.filterMessage(one) {
			out, _ := json.Marshal(one)
			return out
		}
		return b
	}
	var batch []map[string]json.RawMessage
	if json.Unmarshal(b, &batch) == nil {
		changed := false
		for _, m := range batch {
			changed = f.filterMessage(m) || changed
		}
		if changed {
			out, _ := json.Marshal(batch)
			return out
		}
	}
	return b
}

// filterMessage filters msg in place when it answers a tools/list request
// of this call with a list; it reports whether it changed msg.
func (f *listFilter) filterMessage(msg map[string]json.RawMessage) bool {
	if msg == nil || !f.mc.answers(compactJSON(msg["id"]), "tools/list") || msg["result"] == nil {
		return false
	}
	var result map[string]json.RawMessage
	if json.Unmarshal(msg["result"], &result) != nil {
		return false
	}
	var tools []json.RawMessage
	if json.Unmarshal(result["tools"], &tools) != nil {
		return false
	}
	kept := make([]json.RawMessage, 0, len(tools))
	for _, t := range tools {
		var named struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(t, &named) == nil && f.visible(named.Name) {
			kept = append(kept, t)
		}
	}
	result["tools"], _ = json.Marshal(kept)
	// The list is this passport's: a client may keep it (ttlMs), no
	// intermediary may serve it to another.
	result["cacheScope"] = json.RawMessage(`"private"`)
	msg["result"], _ = json.Marshal(result)
	return true
}

// visible reports whether the passport's holder could be allowed to call
// the tool: the policy's decision on a tools/call of it with the
// arguments unknown (input.mcp.listing, request.body null, a resource
// that names arguments empty). An unmapped tool is never visible.
func (f *listFilter) visible(name string) bool {
	if v, ok := f.seen[name]; ok {
		return v
	}
	v := f.mc.judgeListed(name)
	if len(f.seen) < 1024 {
		f.seen[name] = v
	}
	return v
}

// judgeListed asks the policy about a tool of a tools/list answer.
func (mc *mcpCall) judgeListed(name string) bool {
	c, p := mc.c, mc.p
	mr := mc.route.mcp
	tool := mr.tools[name]
	if tool == nil {
		tool = mr.def
	}
	if tool == nil || len(name) > mcpToolNameMax {
		return false
	}
	m := &mcpMessage{method: "tools/call", name: name, tool: tool, listing: true, resource: tool.listingResource()}
	prev := mc.cur
	mc.cur = m
	defer func() { mc.cur = prev }()
	in, err := p.buildInput(mc.req, c, tool.rt, nil, c.queryValues, c.vp, c.reputation, c.now, nil, nil)
	if err != nil {
		return false
	}
	dec, err := p.enforced.Decide(mc.req.Context(), in.value)
	return err == nil && dec.Allow
}

// sseFilter filters the tools/list results in an event stream, event by
// event, passing every other event through as it comes.
type sseFilter struct {
	rc  io.ReadCloser
	br  *bufio.Reader
	f   *listFilter
	out []byte // filtered bytes not yet read
	err error
}

func (s *sseFilter) Read(p []byte) (int, error) {
	for len(s.out) == 0 && s.err == nil {
		s.out, s.err = s.event()
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	if len(s.out) == 0 && s.err != nil {
		return n, s.err
	}
	return n, nil
}

func (s *sseFilter) Close() error { return s.rc.Close() }

// event reads one event (up to its blank line) and returns it, filtered
// when its data is a tools/list answer of this call.
func (s *sseFilter) event() ([]byte, error) {
	var ev bytes.Buffer
	var data []byte
	hasData := false
	for {
		line, err := s.br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A long line: gather it whole, within the bound.
			full := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(full) <= mcpListMax {
				line, err = s.br.ReadSlice('\n')
				full = append(full, line...)
			}
			if len(full) > mcpListMax {
				return nil, errMCPListTooLarge
			}
			line = full
		}
		if ev.Len()+len(line) > mcpListMax {
			return nil, errMCPListTooLarge
		}
		ev.Write(line)
		if d, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("data:")); ok {
			if hasData {
				data = append(data, '\n')
			}
			data, hasData = append(data, bytes.TrimPrefix(d, []byte(" "))...), true
		}
		if err != nil {
			return ev.Bytes(), err // the stream ended mid-event: as it came
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			break
		}
	}
	if !hasData {
		return ev.Bytes(), nil
	}
	filtered := s.f.filterJSON(data)
	if bytes.Equal(filtered, data) {
		return ev.Bytes(), nil
	}
	// The event again, its data lines replaced by the filtered one.
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(ev.Bytes(), []byte("\n")) {
		t := bytes.TrimRight(line, "\r\n")
		if len(t) == 0 || bytes.HasPrefix(t, []byte("data:")) {
			continue
		}
		out.Write(line)
	}
	out.WriteString("data: ")
	out.Write(filtered)
	out.WriteString("\n\n")
	return out.Bytes(), nil
}

// answered reports whether the upstream's JSON-RPC answer to the call's
// tools/call was seen whole (false for a call that is not MCP).
func (mc *mcpCall) answered() bool {
	if mc == nil {
		return false
	}
	o := mc.outcome.Load()
	return o != nil && o.Result != "unknown"
}

// outcomeTap passes a tools/call answer through unchanged and keeps its
// first bytes, to note the JSON-RPC result or error once it ends.
type outcomeTap struct {
	rc   io.ReadCloser
	mc   *mcpCall
	sse  bool
	buf  []byte
	done bool
}

func (t *outcomeTap) Read(p []byte) (int, error) {
	n, err := t.rc.Read(p)
	if room := mcpTapMax - len(t.buf); room > 0 {
		t.buf = append(t.buf, p[:min(n, room)]...)
	}
	if err == io.EOF {
		t.finish()
	}
	return n, err
}

func (t *outcomeTap) Close() error {
	t.finish()
	return t.rc.Close()
}

func (t *outcomeTap) finish() {
	if t.done {
		return
	}
	t.done = true
	out := &mcpOutcome{Result: "unknown"}
	var texts [][]byte
	if t.sse {
		var data []byte
		for _, line := range bytes.Split(t.buf, []byte("\n")) {
			line = bytes.TrimRight(line, "\r")
			if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				data = append(data, bytes.TrimPrefix(d, []byte(" "))...)
				continue
			}
			if len(line) == 0 && len(data) > 0 {
				texts, data = append(texts, data), nil
			}
		}
		if len(data) > 0 {
			texts = append(texts, data)
		}
	} else {
		texts = [][]byte{t.buf}
	}
	for _, text := range texts {
		if o := t.classify(text); o != nil {
			out = o
			break
		}
	}
	t.mc.outcome.Store(out)
}

// classify finds, in a JSON text of one message or a batch, the answer to
// a tools/call of this call, and says what it was.
func (t *outcomeTap) classify(text []byte) *mcpOutcome {
	type answer struct {
		ID     json.RawMessage `json:"id"`
		Result *struct {
			IsError    bool   `json:"isError"`
			ResultType string `json:"resultType"`
		} `json:"result"`
		Error *struct {
			Code int64 `json:"code"`
		} `json:"error"`
	}
	var msgs []answer
	if t := bytes.TrimLeft(text, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		if json.Unmarshal(text, &msgs) != nil {
			return nil
		}
	} else {
		var one answer
		if json.Unmarshal(text, &one) != nil {
			return nil
		}
		msgs = []answer{one}
	}
	for _, m := range msgs {
		if !t.mc.answers(compactJSON(m.ID), "tools/call") {
			continue
		}
		switch {
		case m.Error != nil:
			return &mcpOutcome{Result: "error", ErrorCode: m.Error.Code}
		case m.Result == nil:
		case m.Result.ResultType == "input_required":
			return &mcpOutcome{Result: "input_required"}
		case m.Result.IsError:
			return &mcpOutcome{Result: "tool_error"}
		default:
			return &mcpOutcome{Result: "result"}
		}
	}
	return nil
}

// compactJSON is an id as the proxy keeps it (mcpMessage.id): as
// json.Marshal writes the value, whatever escapes the upstream chose.
func compactJSON(b json.RawMessage) []byte {
	if len(b) == 0 {
		return nil
	}
	if plainID(b) {
		return b // the usual id, 1 or "abc": already so
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return b
	}
	out, err := json.Marshal(v)
	if err != nil {
		return b
	}
	return out
}

// plainID reports an id that json.Marshal would write as it is: an
// integer without sign or leading zero, or a string of printable ASCII
// that needs no escape.
func plainID(b []byte) bool {
	switch {
	case len(b) == 0:
		return false
	case b[0] == '"':
		if len(b) < 2 || b[len(b)-1] != '"' {
			return false
		}
		for _, c := range b[1 : len(b)-1] {
			if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return false
			}
		}
		return true
	case b[0] >= '1' && b[0] <= '9' || len(b) == 1 && b[0] == '0':
		for _, c := range b {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	return false
}

// answers reports whether id (as compactJSON writes it) is the id of one
// of the call's requests of method.
func (mc *mcpCall) answers(id []byte, method string) bool {
	for i := range mc.msgs {
		if m := &mc.msgs[i]; m.method == method && m.id != nil && bytes.Equal(m.id, id) {
			return true
		}
	}
	return false
}
