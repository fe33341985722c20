package audit_test

import (
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/agentpassport/passport/audit"
)

// Every setting of the audit: section reaches the writer: each field of
// WriterConfig set to a value of its own shows up in the StreamConfig of
// the same name.
func TestWriterConfigReachesTheWriter(t *testing.T) {
	var wc audit.WriterConfig
	v := reflect.ValueOf(&wc).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Int, reflect.Int64:
			if f.Type() == reflect.TypeOf(time.Duration(0)) {
				f.SetInt(int64(time.Duration(i+1) * time.Second))
			} else {
				f.SetInt(int64(i + 1))
			}
		}
	}
	wc.WaitTimeout, wc.WriteTimeout = time.Second, 3*time.Second // wait_timeout < write_timeout
	sc, err := wc.StreamConfig("proxy", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	s := reflect.ValueOf(sc)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if v.Field(i).Kind() != reflect.Int && v.Field(i).Kind() != reflect.Int64 {
			continue
		}
		got := s.FieldByName(name)
		if !got.IsValid() || got.Int() != v.Field(i).Int() {
			t.Errorf("audit.%s = %v does not reach StreamConfig.%s (%v)", v.Type().Field(i).Tag.Get("yaml"), v.Field(i), name, got)
		}
	}
	if !strings.HasPrefix(sc.WriterID, "proxy-") {
		t.Errorf("writer id %q, want proxy-<random>", sc.WriterID)
	}
}

// The example in docs/audit.md is a valid audit: section, key for key.
func TestDocumentedAuditSectionLoads(t *testing.T) {
	b, err := os.ReadFile("../docs/audit.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "```yaml\naudit:\n")
	if start < 0 {
		t.Fatal("docs/audit.md has no audit: example")
	}
	block := doc[start+len("```yaml\n"):]
	block = block[:strings.Index(block, "```")]
	var cfg struct {
		Audit audit.WriterConfig `yaml:"audit"`
	}
	dec := yaml.NewDecoder(bytes.NewReader([]byte(block)))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("docs/audit.md audit: example: %v", err)
	}
	if _, err := cfg.Audit.StreamConfig("x", nil, ""); err == nil || !strings.Contains(err.Error(), "proxy-1.key") {
		// The example names a key file that does not exist here.
		t.Fatalf("loading the example's key: %v", err)
	}
	var wc audit.WriterConfig
	keys := reflect.TypeOf(wc)
	for i := range keys.NumField() {
		if k := keys.Field(i).Tag.Get("yaml"); !strings.Contains(block, "\n  "+k+":") {
			t.Errorf("docs/audit.md's audit: example lacks %s", k)
		}
	}
}
