package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type sample struct {
	Listen  string        `yaml:"listen"`
	Timeout time.Duration `yaml:"timeout"`
	Nested  struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"nested"`
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // substring; empty means success
		check   func(t *testing.T, s sample)
	}{
		{name: "empty keeps defaults", yaml: "", check: func(t *testing.T, s sample) {
			if s.Listen != "127.0.0.1:1" {
				t.Errorf("listen = %q, want default", s.Listen)
			}
		}},
		{name: "values and durations", yaml: "listen: 0.0.0.0:2\ntimeout: 3s\nnested:\n  enabled: true\n", check: func(t *testing.T, s sample) {
			if s.Listen != "0.0.0.0:2" || s.Timeout != 3*time.Second || !s.Nested.Enabled {
				t.Errorf("got %+v", s)
			}
		}},
		{name: "unknown key names line", yaml: "listen: x\nlistne: y\n", wantErr: "line 2: unknown field listne"},
		{name: "nested unknown key names line", yaml: "nested:\n  enabeld: true\n", wantErr: "line 2: unknown field enabeld"},
		{name: "wrong type", yaml: "timeout: [1]\n", wantErr: "line 1"},
		{name: "broken yaml", yaml: "listen: [\n", wantErr: "test.yaml"},
		{name: "two documents", yaml: "listen: a\n---\nlisten: b\n", wantErr: "more than one YAML document"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := sample{Listen: "127.0.0.1:1"}
			err := Decode("test.yaml", []byte(tc.yaml), &s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "test.yaml") {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			tc.check(t, s)
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte("listen: a:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var s sample
	if err := Load(p, &s); err != nil || s.Listen != "a:1" {
		t.Fatalf("Load = %v, %+v", err, s)
	}
	if err := Load(filepath.Join(dir, "missing.yaml"), &s); err == nil {
		t.Fatal("missing file: want error")
	}
	if err := Load("", &s); err != nil {
		t.Fatalf("empty path: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxFileSize+10), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Load(big, &s); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("big file: err = %v", err)
	}
}

func TestEnv(t *testing.T) {
	m := map[string]string{"A": "x"}
	e := Env(func(k string) string { return m[k] })
	a, b := "default", "default"
	e.String("A", &a)
	e.String("B", &b)
	if a != "x" || b != "default" {
		t.Fatalf("a=%q b=%q", a, b)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("listen: a\n")
	f.Add("nested: {enabled: true}\n")
	f.Add("timeout: 1h\nx: 1")
	f.Fuzz(func(t *testing.T, in string) {
		var s sample
		_ = Decode("fuzz.yaml", []byte(in), &s) // must not panic
	})
}
