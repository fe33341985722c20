package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// WriterConfig is the `audit:` section of every component that writes
// audit records (authority, proxy, healer, chaos): the settings of its
// writer that an operator sets in YAML. Zero values take the defaults of
// StreamConfig.
type WriterConfig struct {
	// WriterID names the writer's chains. Default: the component's name
	// and a random suffix, a new writer per start. Set it with
	// SigningKeyFile to keep one identity (and one chain) across restarts;
	// it must be the id the key was made for (`passport audit keygen
	// --writer ID`), since the trusted-keys line names both.
	WriterID string `yaml:"writer_id"`
	// SigningKeyFile is the writer's Ed25519 checkpoint key as `passport
	// audit keygen` writes it (PEM PKCS #8; a base64 seed also works).
	// Default: a key generated per start. WriterID and SigningKeyFile are
	// set together or not at all.
	SigningKeyFile string `yaml:"signing_key_file"`
	// CheckpointInterval seals every chain with new records this often
	// and hands the heads to the witnesses. Default 1s.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// CheckpointEvery also seals a chain after this many records. Default 1000.
	CheckpointEvery int `yaml:"checkpoint_every"`
	// Retention trims records older than this from the streams the writer
	// writes (a signed retention checkpoint first). Default 0: never.
	Retention time.Duration `yaml:"retention"`
	// RetentionInterval is how often trimming runs. Default 1h.
	RetentionInterval time.Duration `yaml:"retention_interval"`
	// WaitReplicas makes every batch wait until that many replicas have it
	// (Redis WAIT), for at most WaitTimeout, or fail closed. Default 0.
	// On a Cluster each primary waits for its own replicas.
	WaitReplicas int           `yaml:"wait_replicas"`
	WaitTimeout  time.Duration `yaml:"wait_timeout"`
	// WriteTimeout bounds one write-ahead append. Default 2s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// SpoolDir keeps outcome records on disk while Redis cannot take them,
	// also across a restart (one process per directory). Default: a
	// private temporary directory made on first need.
	SpoolDir string `yaml:"spool_dir"`
	// SpoolMaxBytes bounds the spool. Default 256 MiB.
	SpoolMaxBytes int64 `yaml:"spool_max_bytes"`
	// OutcomeBuffer is how many outcome records may wait in memory.
	// Default 10000.
	OutcomeBuffer int `yaml:"outcome_buffer"`
	// ShutdownTimeout bounds the final flush when the writer stops.
	// Default 5s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Witnesses receive the writer's signed statements outside Redis:
	// directories or http(s):// URLs of `passport witness`. Default: the
	// process's (PASSPORT_WITNESS, --witness).
	Witnesses []string `yaml:"witnesses"`
	// WitnessHeartbeat and WitnessTimeout: defaults 10s and 2s.
	WitnessHeartbeat time.Duration `yaml:"witness_heartbeat"`
	WitnessTimeout   time.Duration `yaml:"witness_timeout"`
	// Archive moves sealed segments of the streams out of Redis into
	// files and keeps only a window in Redis. Default: off.
	Archive ArchiveConfig `yaml:"archive"`
	// The tuning of group commit and retries, rarely changed (see
	// StreamConfig): max_batch 256, max_wait 200µs, outcome_delay 20ms,
	// retry_min 50ms, retry_max 5s, durability_interval 1m, max_field
	// 1024 and max_json 16384 bytes.
	MaxBatch           int           `yaml:"max_batch"`
	MaxWait            time.Duration `yaml:"max_wait"`
	OutcomeDelay       time.Duration `yaml:"outcome_delay"`
	RetryMin           time.Duration `yaml:"retry_min"`
	RetryMax           time.Duration `yaml:"retry_max"`
	DurabilityInterval time.Duration `yaml:"durability_interval"`
	MaxField           int           `yaml:"max_field"`
	MaxJSON            int           `yaml:"max_json"`
}

// Validate reports every problem of c.
func (c WriterConfig) Validate() error {
	var errs []error
	if strings.ContainsAny(c.WriterID, " \t\r\n") {
		errs = append(errs, fmt.Errorf("audit.writer_id %q: no whitespace allowed", c.WriterID))
	}
	if (c.SigningKeyFile == "") != (c.WriterID == "") {
		// An id with a key made per start would be refused on restart (the
		// id is registered with the first key); a key without its id would
		// not match its trusted-keys line.
		errs = append(errs, errors.New("audit.writer_id and audit.signing_key_file go together: `passport audit keygen --writer ID --out FILE` makes both"))
	}
	for name, d := range map[string]time.Duration{
		"checkpoint_interval": c.CheckpointInterval, "retention": c.Retention, "retention_interval": c.RetentionInterval,
		"wait_timeout": c.WaitTimeout, "write_timeout": c.WriteTimeout, "shutdown_timeout": c.ShutdownTimeout,
		"witness_heartbeat": c.WitnessHeartbeat, "witness_timeout": c.WitnessTimeout,
		"retry_min": c.RetryMin, "retry_max": c.RetryMax, "durability_interval": c.DurabilityInterval,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("audit.%s: must not be negative", name))
		}
	}
	if err := c.Archive.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Archive.Enabled() && c.Retention > 0 {
		// Retention trims by age whatever is there, archived or not.
		errs = append(errs, errors.New("audit.retention and audit.archive.dir exclude each other: the archive's window is the retention of Redis"))
	}
	if c.CheckpointEvery < 0 || c.WaitReplicas < 0 || c.SpoolMaxBytes < 0 || c.OutcomeBuffer < 0 || c.MaxBatch < 0 || c.MaxField < 0 || c.MaxJSON < 0 {
		errs = append(errs, errors.New("audit: checkpoint_every, wait_replicas, spool_max_bytes, outcome_buffer, max_batch, max_field and max_json must not be negative"))
	}
	return errors.Join(errs...)
}

// StreamConfig turns c into the writer's settings: it loads the signing
// key and names the writer defaultID plus a random suffix when c names
// none. witnesses are the process's; c.Witnesses, when set, open their own
// (with token for HTTP witnesses).
func (c WriterConfig) StreamConfig(defaultID string, witnesses []Witness, token string) (StreamConfig, error) {
	if err := c.Validate(); err != nil {
		return StreamConfig{}, err
	}
	sc := StreamConfig{
		WriterID: c.WriterID, CheckpointInterval: c.CheckpointInterval, CheckpointEvery: c.CheckpointEvery,
		Retention: c.Retention, RetentionInterval: c.RetentionInterval, WaitReplicas: c.WaitReplicas,
		WaitTimeout: c.WaitTimeout, WriteTimeout: c.WriteTimeout, SpoolDir: c.SpoolDir, SpoolMaxBytes: c.SpoolMaxBytes,
		OutcomeBuffer: c.OutcomeBuffer, ShutdownTimeout: c.ShutdownTimeout, Witnesses: witnesses,
		WitnessHeartbeat: c.WitnessHeartbeat, WitnessTimeout: c.WitnessTimeout,
		MaxBatch: c.MaxBatch, MaxWait: c.MaxWait, OutcomeDelay: c.OutcomeDelay, RetryMin: c.RetryMin, RetryMax: c.RetryMax,
		DurabilityInterval: c.DurabilityInterval, MaxField: c.MaxField, MaxJSON: c.MaxJSON,
	}
	if sc.WriterID == "" && defaultID != "" {
		sc.WriterID = defaultID + "-" + rand.Text()[:8]
	}
	if c.SigningKeyFile != "" {
		k, err := LoadSigningKey(c.SigningKeyFile)
		if err != nil {
			return StreamConfig{}, err
		}
		sc.SigningKey = k
	}
	if len(c.Witnesses) > 0 {
		ws, err := OpenWitnesses(c.Witnesses, token)
		if err != nil {
			return StreamConfig{}, fmt.Errorf("audit.witnesses: %w", err)
		}
		sc.Witnesses = ws
	}
	return sc, nil
}

// LoadOrCreateSigningKey reads the writer key at path, or creates it (mode
// 0600, its directory 0700) when it does not exist yet: the stable
// identity of a writer that has no operator-made key, such as a one-shot
// CLI command or the demo, so that runs reuse one writer instead of
// registering a new one each time.
func LoadOrCreateSigningKey(path string) (ed25519.PrivateKey, error) {
	k, err := LoadSigningKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate audit signing key: %w", err)
	}
	b, err := MarshalSigningKey(key)
	if err != nil {
		return nil, err
	}
	// Written aside and linked into place, so that a run starting at the
	// same moment reads either no file or the whole key.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return LoadSigningKey(path) // made meanwhile by another run
	} else if err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	return key, nil
}

// Discard is a Sink that keeps nothing: for tests and benchmarks of
// components that must be given a writer, never for a deployment (its
// receipts acknowledge a store that does not exist).
var Discard Sink = discard{}

type discard struct{}

func (discard) Append(_ context.Context, rec *Record) (Receipt, error) {
	return ReceiptForTest("0-1", rec), nil
}

func (discard) Enqueue(*Record) {}
