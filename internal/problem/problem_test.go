package problem

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWrite(t *testing.T) {
	w := httptest.NewRecorder()
	Write(w, Details{Status: http.StatusForbidden, Code: "policy_denied", Detail: "denied <here>",
		RequestID: "r1", Reasons: []string{"a", "b"}})
	if w.Code != 403 || w.Header().Get("Content-Type") != "application/problem+json" ||
		w.Header().Get("Cache-Control") != "no-store" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	var got map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": Base + "policy_denied", "title": "Forbidden", "status": 403.0, "code": "policy_denied",
		"detail": "denied <here>", "request_id": "r1", "reasons": []any{"a", "b"}}
	if len(got) != len(want) {
		t.Fatalf("members %v, want %v", got, want)
	}
	for k, v := range want {
		if g, _ := json.Marshal(got[k]); string(g) != string(must(json.Marshal(v))) {
			t.Errorf("%s = %s, want %v", k, g, v)
		}
	}
}

func TestAnswerOmitsEmptyExtensions(t *testing.T) {
	w := httptest.NewRecorder()
	Answer(w, http.StatusNotFound, "not_found", "no such endpoint")
	want := `{"type":"` + Base + `not_found","title":"Not Found","status":404,"code":"not_found","detail":"no such endpoint"}` + "\n"
	if w.Body.String() != want {
		t.Fatalf("body %s\nwant %s", w.Body, want)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
