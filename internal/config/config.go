// Package config loads YAML configuration strictly: an unknown or misspelt
// key is an error that names the file and the line, so a typo in a security
// setting never silently falls back to a default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds a config file; anything larger is refused.
const MaxFileSize = 4 << 20

// Load reads path into dst (a pointer to a struct already holding its
// defaults). An empty path leaves dst unchanged.
func Load(path string, dst any) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return fmt.Errorf("config %s: larger than %d bytes", path, MaxFileSize)
	}
	return Decode(path, data, dst)
}

// Decode decodes YAML data into dst strictly; name is used in errors.
func Decode(name string, data []byte, dst any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: keep defaults
		}
		return fmt.Errorf("config %s: %s", name, cleanYAMLError(err))
	}
	// A second document would be ignored silently; refuse it instead.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: more than one YAML document", name)
	}
	return nil
}

var yamlPrefix = regexp.MustCompile(`^yaml: (unmarshal errors:\n\s*)?`)

// cleanYAMLError turns "yaml: unmarshal errors:\n  line 3: field x not found
// in type config.T" into "line 3: unknown field x".
func cleanYAMLError(err error) string {
	s := yamlPrefix.ReplaceAllString(err.Error(), "")
	s = regexp.MustCompile(`field (\S+) not found in type \S+`).ReplaceAllString(s, "unknown field $1")
	s = strings.ReplaceAll(s, "\n  ", "; ")
	return s
}

// Env is a lookup function such as os.Getenv; tests pass a map's.
type Env func(string) string

// String sets *dst to env(key) when that is non-empty.
func (e Env) String(key string, dst *string) {
	if e == nil {
		return
	}
	if v := e(key); v != "" {
		*dst = v
	}
}
