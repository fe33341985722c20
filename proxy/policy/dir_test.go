//go:build unix

package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// secretOutside is a file outside any policy directory, as a host secret
// would be.
func secretOutside(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin-token.json")
	if err := os.WriteFile(p, []byte(`{"passport": {"config": {"token": "s3cr3t"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReadDirRefuses (issue 13, item 7): a policy directory holds policies,
// nothing else. Each hostile entry is refused with its file and the
// reason, in either layout; before, os.DirFS followed a data.json symlink
// anywhere and loaded the file it led to, and then ReadDir followed links
// that stayed inside the directory ("symlink inside").
func TestReadDirRefuses(t *testing.T) {
	secret := secretOutside(t)
	const link = "a symbolic link"
	cases := []struct {
		name, file, reason string
		make               func(t *testing.T, dir string)
	}{
		{"symlink outside", "data.json", link, func(t *testing.T, dir string) {
			symlink(t, secret, filepath.Join(dir, "data.json"))
		}},
		{"relative symlink outside", "data.json", link, func(t *testing.T, dir string) {
			rel, _ := filepath.Rel(dir, secret)
			symlink(t, rel, filepath.Join(dir, "data.json"))
		}},
		{"symlink inside", "data.json", link, func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "real.txt"), `{}`)
			symlink(t, "real.txt", filepath.Join(dir, "data.json"))
		}},
		{"absolute symlink inside", "data.json", link, func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "real.txt"), `{}`)
			symlink(t, filepath.Join(dir, "real.txt"), filepath.Join(dir, "data.json"))
		}},
		{"symlink into a hidden directory", "data.json", link, func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, ".hidden"), 0o755); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, ".hidden", "data.json"), `{}`)
			symlink(t, ".hidden/data.json", filepath.Join(dir, "data.json"))
		}},
		{"in a subdirectory", "sub/data.json", link, func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			symlink(t, "../../"+filepath.Base(filepath.Dir(secret))+"/"+filepath.Base(secret), filepath.Join(dir, "sub", "data.json"))
		}},
		{"linked directory", "linked.rego", link, func(t *testing.T, dir string) {
			symlink(t, filepath.Dir(secret), filepath.Join(dir, "linked.rego"))
		}},
		{"fifo", "data.json", "named pipe", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "data.json"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"link to a fifo", "extra.rego", link, func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
			symlink(t, "pipe", filepath.Join(dir, "extra.rego"))
		}},
		{"socket", "sock.yaml", "socket", func(t *testing.T, dir string) {
			ln, err := net.Listen("unix", filepath.Join(dir, "sock.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}},
		// A device inside the directory needs mknod (root); a link to one
		// is a link.
		{"link to a device", "data.json", link, func(t *testing.T, dir string) {
			symlink(t, "/dev/zero", filepath.Join(dir, "data.json"))
		}},
		{"too large", "big.json", "larger than", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "big.json"), `{"a": "`+strings.Repeat("x", MaxFileBytes)+`"}`)
		}},
		{"hard link", "data.json", "hard links", func(t *testing.T, dir string) {
			other := filepath.Join(t.TempDir(), "elsewhere.json")
			write(t, other, `{}`)
			if err := os.Link(other, filepath.Join(dir, "data.json")); err != nil {
				t.Fatal(err) // both are under the test's temporary directory
			}
		}},
	}
	for _, layout := range []DirLayout{PlainDir, ConfigMapDir} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/layout=%d", tc.name, layout), func(t *testing.T) {
				dir := copyDir(t, "testdata/good")
				tc.make(t, dir)
				refused(t, dir, layout, tc.file, tc.reason)
			})
		}
	}
}

// refused checks that ReadDir, and an engine, refuse dir, naming file and
// the reason, and that neither quotes the file.
func refused(t *testing.T, dir string, layout DirLayout, file, reason string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := ReadDir(dir, layout); done <- err }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ReadDir hangs") // a FIFO opened for reading would block here
	}
	var fe *FileError
	if !errors.As(err, &fe) || !errors.Is(err, ErrPolicyFile) || fe.File != file ||
		!strings.Contains(fe.Reason, reason) {
		t.Fatalf("ReadDir: %v; want a FileError for %s: ...%s...", err, file, reason)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Fatal("the error quotes the file")
	}
	// The same through the engine: no policy, and the error says why.
	if _, err := New(context.Background(), Options{Dir: dir, Layout: layout, Logger: quiet()}); !errors.Is(err, ErrPolicyFile) {
		t.Fatalf("engine load: %v", err)
	}
}

// configMap lays dir out as the kubelet lays out a ConfigMap volume:
// each file in a hidden, versioned directory, ..data a link to it, and at
// the top a link NAME -> ..data/NAME for each file. It returns a function
// that publishes a new version as the kubelet does (..data swapped by a
// rename).
func configMap(t *testing.T, dir string, files map[string]string) func(version string, files map[string]string) {
	t.Helper()
	publish := func(version string, files map[string]string) {
		v := filepath.Join(dir, version)
		if err := os.Mkdir(v, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			write(t, filepath.Join(v, name), data)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		symlink(t, version, tmp)
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish("..2026_11_25_1", files)
	for name := range files {
		symlink(t, "..data/"+name, filepath.Join(dir, name))
	}
	return publish
}

func goodFiles(t *testing.T) map[string]string {
	t.Helper()
	good, err := os.ReadFile("testdata/good/authz.rego")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("testdata/good/data.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"authz.rego": string(good), "data.yaml": string(data)}
}

// TestReadDirConfigMap: a Kubernetes ConfigMap volume loads when its
// layout is enabled, and only then; an update (the ..data link swapped) is
// seen by the poll, although no link at the top changed.
func TestReadDirConfigMap(t *testing.T) {
	dir := t.TempDir()
	files := goodFiles(t)
	publish := configMap(t, dir, files)
	symlink(t, "/etc/hostname", filepath.Join(dir, "README.md")) // not a policy file: never opened

	// By default every link is refused, these too.
	refused(t, dir, PlainDir, "authz.rego", "a symbolic link")

	fsys, err := ReadDir(dir, ConfigMapDir)
	if err != nil {
		t.Fatal(err)
	}
	names, _ := fs.Glob(fsys, "*")
	if strings.Join(names, ",") != "authz.rego,data.yaml" {
		t.Fatalf("loaded %v", names)
	}
	if b, _ := fs.ReadFile(fsys, "authz.rego"); string(b) != files["authz.rego"] {
		t.Fatal("authz.rego is not the ConfigMap's file")
	}
	sig0 := signature(dir, ConfigMapDir)
	files["data.yaml"] = "allowed:\n  observer: [\"service.restart\"]\n"
	publish("..2026_11_25_2", files)
	if sig1 := signature(dir, ConfigMapDir); sig1 == sig0 {
		t.Fatal("the poll does not see a ConfigMap update")
	}
	fsys, err = ReadDir(dir, ConfigMapDir)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := fs.ReadFile(fsys, "data.yaml"); string(b) != files["data.yaml"] {
		t.Fatal("the update was not read")
	}
}

// TestReadDirConfigMapRefuses: with the ConfigMap layout enabled, a link
// that is not exactly a ConfigMap volume's is refused, with the file and
// why.
func TestReadDirConfigMapRefuses(t *testing.T) {
	secret := secretOutside(t)
	cases := []struct {
		name, file, reason string
		make               func(t *testing.T, dir string)
	}{
		{"link to another name", "data.json", "not a ConfigMap volume's", func(t *testing.T, dir string) {
			symlink(t, "..data/data.yaml", filepath.Join(dir, "data.json"))
		}},
		{"link outside", "data.json", "not a ConfigMap volume's", func(t *testing.T, dir string) {
			symlink(t, secret, filepath.Join(dir, "data.json"))
		}},
		{"link into the version directory", "data.json", "not a ConfigMap volume's", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "..2026_11_25_1", "data.json"), `{}`)
			symlink(t, "..2026_11_25_1/data.json", filepath.Join(dir, "data.json"))
		}},
		{"link in a subdirectory", "sub/data.json", "not a ConfigMap volume's", func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			symlink(t, "..data/data.json", filepath.Join(dir, "sub", "data.json"))
		}},
		{"a link inside the version", "authz.rego", "a symbolic link", func(t *testing.T, dir string) {
			v := filepath.Join(dir, "..2026_11_25_1", "authz.rego")
			if err := os.Remove(v); err != nil {
				t.Fatal(err)
			}
			symlink(t, secret, v)
		}},
		{"..data absolute", "..data", "not to a hidden directory", func(t *testing.T, dir string) {
			relink(t, filepath.Join(dir, "..2026_11_25_1"), filepath.Join(dir, "..data"))
		}},
		{"..data outside", "..data", "not to a hidden directory", func(t *testing.T, dir string) {
			relink(t, "../"+filepath.Base(filepath.Dir(secret)), filepath.Join(dir, "..data"))
		}},
		{"..data to a link", "..data", "not a directory", func(t *testing.T, dir string) {
			symlink(t, filepath.Dir(secret), filepath.Join(dir, "..evil"))
			relink(t, "..evil", filepath.Join(dir, "..data"))
		}},
		{"..data a directory", "..data", "not a symbolic link", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(dir, "..data"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"..data absent", "authz.rego", "a symbolic link", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			configMap(t, dir, goodFiles(t))
			tc.make(t, dir)
			refused(t, dir, ConfigMapDir, tc.file, tc.reason)
		})
	}
}

// relink points the link name at target.
func relink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	symlink(t, target, name)
}

// TestHotReloadRefusedFileKeepsPolicy: a symlink planted in a hot-reloaded
// directory fails the reload (counted, logged with the file) and the last
// good policy stays; removing it reloads.
func TestHotReloadRefusedFileKeepsPolicy(t *testing.T) {
	dir := copyDir(t, "testdata/good")
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	e, err := New(context.Background(), Options{Dir: dir, Logger: quiet(), PollInterval: 10 * time.Millisecond, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	rev := e.Revision()

	symlink(t, secretOutside(t), filepath.Join(dir, "secret.json"))
	waitFor(t, "the refused reload", func() bool {
		return testutil.ToFloat64(m.Reloads.WithLabelValues("enforced", "failure")) >= 1
	})
	if e.Revision() != rev {
		t.Fatal("a refused file replaced the policy")
	}
	d, err := e.Decide(context.Background(), input(t, "healer", "service.restart"))
	if err != nil || !d.Allow {
		t.Fatalf("the last good policy no longer decides: %+v %v", d, err)
	}
	if err := os.Remove(filepath.Join(dir, "secret.json")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload after the fix", func() bool {
		return testutil.ToFloat64(m.Reloads.WithLabelValues("enforced", "success")) >= 2
	})
	if e.Revision() != rev {
		t.Fatal("the same files gave another revision")
	}
}

func symlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeInfo is a FileInfo of any mode, for what a test cannot create (a
// device needs root).
type fakeInfo struct {
	fs.FileInfo
	mode fs.FileMode
	size int64
}

func (f fakeInfo) Mode() fs.FileMode { return f.mode }
func (f fakeInfo) Size() int64       { return f.size }
func (f fakeInfo) Sys() any          { return nil }

func TestCheckInfo(t *testing.T) {
	for _, tc := range []struct {
		mode fs.FileMode
		size int64
		want string
	}{
		{0o644, 10, ""},
		{0o644, MaxFileBytes, ""},
		{0o644, MaxFileBytes + 1, "larger than"},
		{fs.ModeDevice | 0o666, 0, "device"},
		{fs.ModeDevice | fs.ModeCharDevice | 0o666, 0, "device"},
		{fs.ModeNamedPipe, 0, "named pipe"},
		{fs.ModeSocket, 0, "socket"},
		{fs.ModeDir | 0o755, 0, "directory"},
		{fs.ModeIrregular, 0, "not a regular file"},
	} {
		got := checkInfo(fakeInfo{mode: tc.mode, size: tc.size})
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("checkInfo(%v, %d) = %q, want %q", tc.mode, tc.size, got, tc.want)
		}
	}
}
