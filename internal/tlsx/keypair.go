package tlsx

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Options.
const (
	// DefaultCheckInterval is how often, at most, a handshake looks at the
	// files: two stat calls, so rotation costs nothing measurable.
	DefaultCheckInterval = time.Second
	// fullCheckEvery reads the files even when stat shows no change, for
	// file systems whose timestamps are coarse.
	fullCheckEvery = time.Minute
)

// Options are what building a TLS configuration needs besides its block.
type Options struct {
	// Name says what the certificate is for, in logs and in the metrics'
	// "name" label: a fixed word such as "proxy" or "upstream fleet",
	// never something a client chose.
	Name string
	// Logger receives reload events. Default: none are logged.
	Logger *slog.Logger
	// Metrics counts reloads and exposes expiry. Default: none.
	Metrics *Metrics
	// CheckInterval bounds how often the files are looked at. Default
	// DefaultCheckInterval.
	CheckInterval time.Duration
	// Clock is the time source. Default time.Now.
	Clock func() time.Time
}

// KeyPair is a certificate and key read from two files and read again when
// they change: rotation without a restart, as cert-manager and SPIRE
// helpers rotate them (a new file renamed over the old one, or a symlink
// swapped). The check runs in the handshake, at most once per
// CheckInterval, and costs two stat calls unless the files changed. A new
// pair that does not load (unreadable, half written, key not matching,
// expired) is refused: the old one stays in use, and the refusal is
// logged and counted once per distinct problem.
type KeyPair struct {
	certFile, keyFile string
	name              string
	log               *slog.Logger
	m                 *Metrics
	interval          time.Duration
	now               func() time.Time

	cur       atomic.Pointer[tls.Certificate]
	nextCheck atomic.Int64 // unix nanoseconds

	mu sync.Mutex // one check at a time; guards what follows
	// certStat and keyStat are what the files looked like when the pair
	// in use was read; nil forces a read at the next check.
	certStat, keyStat os.FileInfo
	sum               [sha256.Size]byte // of the pair in use
	fullAt            time.Time
	refused           string // the last refusal logged
}

// NewKeyPair reads the pair now: a server must not start without a
// certificate it can serve.
func NewKeyPair(certFile, keyFile string, o Options) (*KeyPair, error) {
	k := &KeyPair{certFile: certFile, keyFile: keyFile, name: o.Name, log: o.Logger, m: o.Metrics,
		interval: o.CheckInterval, now: o.Clock}
	if k.interval <= 0 {
		k.interval = DefaultCheckInterval
	}
	if k.now == nil {
		k.now = time.Now
	}
	now := k.now()
	cs, ks, certPEM, keyPEM, err := k.read()
	if err != nil {
		return nil, fmt.Errorf("tls %s: %w", k.name, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls %s: %s and %s: %w", k.name, certFile, keyFile, err)
	}
	if err := validAt(cert, now); err != nil && k.log != nil {
		// Served anyway: refusing to start would not make clients accept
		// it either, and the reload picks up its replacement.
		k.log.Warn("tls certificate not valid now", "name", k.name, "cert_file", certFile, "error", err)
	}
	k.cur.Store(&cert)
	k.certStat, k.keyStat, k.sum = cs, ks, pairSum(certPEM, keyPEM)
	k.fullAt = now.Add(fullCheckEvery)
	k.nextCheck.Store(now.Add(k.interval).UnixNano())
	if k.m != nil {
		k.m.add(k)
	}
	return k, nil
}

// Certificate is the pair in use, after looking for a new one when the
// last look is CheckInterval old. A handshake that finds another one
// checking does not wait for it.
func (k *KeyPair) Certificate() *tls.Certificate {
	if k.now().UnixNano() >= k.nextCheck.Load() && k.mu.TryLock() {
		k.check(k.now())
		k.mu.Unlock()
	}
	return k.cur.Load()
}

// GetCertificate is tls.Config.GetCertificate.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.Certificate(), nil
}

// GetClientCertificate is tls.Config.GetClientCertificate.
func (k *KeyPair) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return k.Certificate(), nil
}

// check looks at the files and swaps in a changed pair that loads. k.mu
// is held.
func (k *KeyPair) check(now time.Time) {
	k.nextCheck.Store(now.Add(k.interval).UnixNano())
	cs, err1 := os.Stat(k.certFile)
	ks, err2 := os.Stat(k.keyFile)
	if err1 == nil && err2 == nil && same(cs, k.certStat) && same(ks, k.keyStat) && now.Before(k.fullAt) {
		return
	}
	cs, ks, certPEM, keyPEM, err := k.read()
	if err != nil {
		k.refuse(err.Error())
		return
	}
	sum := pairSum(certPEM, keyPEM)
	if sum == k.sum {
		// Touched or copied again, not changed.
		k.certStat, k.keyStat, k.fullAt, k.refused = cs, ks, now.Add(fullCheckEvery), ""
		return
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil {
		err = validAt(cert, now)
	}
	if err != nil {
		// The stamps are left as they were, so the next check reads the
		// files again: the key of a pair may land a moment after its
		// certificate.
		k.refuse(fmt.Sprintf("%x: %v", sum[:4], err))
		return
	}
	k.cur.Store(&cert)
	k.certStat, k.keyStat, k.sum, k.fullAt, k.refused = cs, ks, sum, now.Add(fullCheckEvery), ""
	if k.m != nil {
		k.m.reloads.WithLabelValues(k.name, "success").Inc()
	}
	if k.log != nil {
		k.log.Info("tls certificate reloaded", "name", k.name, "cert_file", k.certFile,
			"subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	}
}

// refuse keeps the pair in use; each distinct problem is logged and
// counted once, however many handshakes run into it.
func (k *KeyPair) refuse(problem string) {
	if problem == k.refused {
		return
	}
	k.refused = problem
	if k.m != nil {
		k.m.reloads.WithLabelValues(k.name, "failure").Inc()
	}
	if k.log != nil {
		k.log.Warn("tls certificate reload refused; keeping the one in use", "name", k.name,
			"cert_file", k.certFile, "key_file", k.keyFile, "error", problem)
	}
}

func (k *KeyPair) read() (cs, ks os.FileInfo, certPEM, keyPEM []byte, err error) {
	// Stat before reading: a change between the two shows at the next
	// check instead of being missed.
	if cs, err = os.Stat(k.certFile); err != nil {
		return
	}
	if ks, err = os.Stat(k.keyFile); err != nil {
		return
	}
	if certPEM, err = readFile(k.certFile); err != nil {
		return
	}
	keyPEM, err = readFile(k.keyFile)
	return
}

// NotAfter is the expiry of the certificate in use.
func (k *KeyPair) NotAfter() time.Time {
	c := k.Certificate()
	if c.Leaf == nil {
		return time.Time{}
	}
	return c.Leaf.NotAfter
}

func same(a, b os.FileInfo) bool {
	return b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

func pairSum(certPEM, keyPEM []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	var s [sha256.Size]byte
	h.Sum(s[:0])
	return s
}

func validAt(c tls.Certificate, now time.Time) error {
	if c.Leaf == nil {
		return errors.New("no leaf certificate")
	}
	switch {
	case now.After(c.Leaf.NotAfter):
		return fmt.Errorf("certificate expired at %s", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.Leaf.NotBefore):
		return fmt.Errorf("certificate not valid before %s", c.Leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// Metrics are the TLS metrics of one registry:
// passport_tls_certificate_reloads_total{name,result} and
// passport_tls_certificate_expiry_timestamp_seconds{name}. The expiry is
// read at scrape time, which also checks the files, so an alert on it
// sees a rotation even when no client has connected since.
type Metrics struct {
	reloads *prometheus.CounterVec
	expiry  *prometheus.Desc

	mu    sync.Mutex
	pairs map[string]*KeyPair
}

// NewMetrics registers the TLS metrics on reg (nil: not registered). A
// registry that has them already shares them. Until a certificate is
// loaded they have no series, so a plain-HTTP component's /metrics does
// not change.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passport_tls_certificate_reloads_total",
			Help: "Certificate reloads after the files changed, by name and result (failure: the old pair stays in use).",
		}, []string{"name", "result"}),
		expiry: prometheus.NewDesc("passport_tls_certificate_expiry_timestamp_seconds",
			"NotAfter of the certificate in use, as a Unix time, by name.", []string{"name"}, nil),
		pairs: map[string]*KeyPair{},
	}
	if reg == nil {
		return m
	}
	if err := reg.Register(m); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(*Metrics); ok {
				return old
			}
		}
		// Another collector holds the names (a wrapping registerer):
		// count privately rather than fail the component.
	}
	return m
}

func (m *Metrics) add(k *KeyPair) {
	m.mu.Lock()
	m.pairs[k.name] = k
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.reloads.Describe(ch)
	ch <- m.expiry
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.reloads.Collect(ch)
	m.mu.Lock()
	pairs := make([]*KeyPair, 0, len(m.pairs))
	for _, k := range m.pairs {
		pairs = append(pairs, k)
	}
	m.mu.Unlock()
	for _, k := range pairs {
		if t := k.NotAfter(); !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.expiry, prometheus.GaugeValue, float64(t.Unix()), k.name)
		}
	}
}
