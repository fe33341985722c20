// Package browsertest starts a private headless Chromium for browser tests
// (chromedp) and saves a screenshot of the page when a test fails.
//
// When Chromium is not installed the test is skipped locally with a hint,
// but fails when the CI environment variable is set: CI must never go green
// by skipping the browser tests.
package browsertest

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Find returns the browser, or fails (CI) or skips (laptop) with the way to
// get it. PASSPORT_CHROMIUM names another binary.
func Find(t testing.TB) string {
	t.Helper()
	for _, name := range []string{os.Getenv("PASSPORT_CHROMIUM"), "chromium", "chromium-browser"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found (CI is set, so this is a failure): run scripts/deps.sh chromium")
	}
	t.Skip("chromium not found: run scripts/deps.sh chromium")
	return ""
}

// New starts a fresh headless Chromium with its own profile for the test
// and returns its context; it is stopped when the test ends. The flags keep
// Chromium off the network: only the pages the test opens are fetched.
// extra are further allocator options (TrustSPKI).
func New(t testing.TB, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	bin := Find(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	}
	opts = append(opts, extra...)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	ScreenshotOnFailure(t, ctx)
	return ctx
}

// TrustSPKI makes Chromium accept a server certificate whose public key is
// cert's (a PEM file) although no root it knows signed it: a pin on one key,
// not a switch that turns verification off. Every other certificate is
// still verified against the system's roots. Chromium honours the flag only
// with a user data directory of its own, which New always sets.
func TrustSPKI(t testing.TB, certFile string) chromedp.ExecAllocatorOption {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatalf("browsertest: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("browsertest: %s: no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("browsertest: %s: %v", certFile, err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(sum[:]))
}

// ScreenshotOnFailure saves the page when the test failed: under the test's
// artifact directory with -artifacts, else in $TMPDIR/passport-browser-tests.
func ScreenshotOnFailure(t testing.TB, ctx context.Context) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(90))
		if err != nil {
			t.Logf("screenshot failed: %v", err)
			return
		}
		name := filepath.Join(artifactDir(t), strings.ReplaceAll(t.Name(), "/", "_")+".png")
		if err := os.WriteFile(name, png, 0o644); err != nil {
			t.Logf("write screenshot: %v", err)
			return
		}
		t.Logf("screenshot of the failed page: %s", name)
	})
}

// Layout is a browser viewport size.
type Layout struct{ Width, Height int64 }

// Layouts are the screen sizes the dashboard must fit: a laptop and a
// full-HD wall screen.
var Layouts = []Layout{{1280, 800}, {1920, 1080}}

func (l Layout) String() string {
	return strconv.FormatInt(l.Width, 10) + "x" + strconv.FormatInt(l.Height, 10)
}

// Screenshot saves the viewport as <test>[_<name>].png: under the test's
// artifact directory with -artifacts, else in $TMPDIR/passport-browser-tests.
// It returns the file's path.
func Screenshot(t testing.TB, ctx context.Context, name string) string {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := artifactDir(t)
	base := strings.ReplaceAll(t.Name(), "/", "_")
	if name != "" {
		base += "_" + name
	}
	file := filepath.Join(dir, base+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatalf("write screenshot: %v", err)
	}
	return file
}

func artifactDir(t testing.TB) string {
	dir := filepath.Join(os.TempDir(), "passport-browser-tests")
	if f := flag.Lookup("test.artifacts"); f != nil && f.Value.String() == "true" {
		dir = t.ArtifactDir()
	}
	_ = os.MkdirAll(dir, 0o755)
	return dir
}

// OffScreen scrolls the page to the top and returns, for each selector
// whose element is missing, empty or not entirely inside the viewport, a
// line saying where it is: what a person sees without scrolling.
func OffScreen(ctx context.Context, selectors ...string) ([]string, error) {
	b, err := json.Marshal(selectors)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(sctx, chromedp.Evaluate[[]string](`(() => {
		window.scrollTo(0, 0);
		const W = document.documentElement.clientWidth, H = window.innerHeight, out = [];
		for (const s of `+string(b)+`) {
			const e = document.querySelector(s);
			if (!e) { out.push(s + ": missing"); continue; }
			const r = e.getBoundingClientRect();
			if (r.width < 1 || r.height < 1 || r.top < 0 || r.left < 0 || r.bottom > H + 0.5 || r.right > W + 0.5)
				out.push(s + ": box " + [r.left, r.top, r.right, r.bottom].map(Math.round).join(",") + " outside " + W + "x" + H);
		}
		return out;
	})()`))
}
