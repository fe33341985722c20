package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing/fstest"
)

// Bounds of a policy directory. A policy is a few dozen small files; these
// leave room for large data files while keeping a mistaken or hostile
// directory (a log file named data.json, a device) from exhausting memory.
const (
	// MaxFileBytes bounds one policy file.
	MaxFileBytes = 4 << 20
	// MaxDirBytes bounds all policy files together.
	MaxDirBytes = 32 << 20
	// MaxFiles bounds the number of policy files.
	MaxFiles = 1000
)

// FileError is a policy file refused at load.
type FileError struct {
	File   string // path inside the policy directory
	Reason string
}

func (e *FileError) Error() string { return "policy file " + e.File + ": " + e.Reason }

// ErrPolicyFile matches every *FileError (errors.Is).
var ErrPolicyFile = errors.New("policy file refused")

func (e *FileError) Is(target error) bool { return target == ErrPolicyFile }

// DirLayout is how a policy directory may be laid out: which symbolic
// links, if any, ReadDir follows.
type DirLayout int

const (
	// PlainDir is the default: every policy file is a regular file in the
	// directory or a subdirectory, and every symbolic link is refused.
	PlainDir DirLayout = iota
	// ConfigMapDir also accepts a Kubernetes ConfigMap volume, exactly:
	// a top-level policy file NAME may be the link NAME -> ..data/NAME,
	// where ..data is a link to a hidden directory ..VERSION of the
	// policy directory (no slash in the target) that holds NAME as a
	// regular file. Those two links are followed and no other; every
	// other symbolic link is refused as in PlainDir.
	ConfigMapDir
)

// ParseDirLayout maps the configuration's switch to a layout.
func ParseDirLayout(kubernetesConfigMap bool) DirLayout {
	if kubernetesConfigMap {
		return ConfigMapDir
	}
	return PlainDir
}

// ReadDir reads the policy files of dir into memory and returns them as an
// fs.FS: the engine, `passport policy test|check` and the replay tool read
// a directory only through it, then Load. Policy files are .rego (tests
// included: Load filters them), .json, .yaml and .yml files; hidden files
// and directories and other files are ignored and never opened.
//
// A policy directory holds policies, nothing else. Each policy file must be
// a regular file in the directory (or a subdirectory): a symbolic link is
// refused, wherever it leads, except a Kubernetes ConfigMap volume's links
// when layout is ConfigMapDir; so are a FIFO, a device, a socket, a file
// with other hard links (it may be a file from elsewhere) and a file over
// MaxFileBytes. Without these, a data.json linked to a secret elsewhere on
// the host would be loaded as policy data, and a policy could hand it to
// agents in its reasons. Every refused file is named in the returned
// error, with why.
func ReadDir(dir string, layout DirLayout) (fs.FS, error) {
	files, err := scanDir(dir, layout, true)
	if err != nil {
		return nil, err
	}
	out := fstest.MapFS{}
	for _, f := range files {
		out[f.name] = &fstest.MapFile{Data: f.data, Mode: 0o444, ModTime: f.info.ModTime()}
	}
	return out, nil
}

// dirFile is one policy file of a directory.
type dirFile struct {
	name   string      // path inside the directory
	target string      // what was read: name, or the ConfigMap file its link leads to
	info   fs.FileInfo // of target
	data   []byte      // when read
}

// scanDir lists the policy files of dir with what they resolve to, checks
// each, and reads them when read is set. The walk goes through os.Root, so
// no step of it leaves dir, and it never follows a symbolic link but the
// two of a ConfigMap volume (ConfigMapDir), which it checks first.
func scanDir(dir string, layout DirLayout, read bool) ([]dirFile, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("policy directory: %w", err)
	}
	defer root.Close()
	var problems []error
	cm := ""
	if layout == ConfigMapDir {
		var problem string
		if cm, problem = configMapData(root); problem != "" {
			problems = append(problems, &FileError{File: configMapLink, Reason: problem})
		}
	}
	var files []dirFile
	total := int64(0)
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir // editor and VCS directories, ConfigMap internals
			}
			return nil
		}
		if d.IsDir() || !IsPolicyFile(p) {
			return nil
		}
		target := p
		if d.Type()&fs.ModeSymlink != 0 {
			var problem string
			if target, problem = followLink(root, p, cm); problem != "" {
				problems = append(problems, &FileError{File: p, Reason: problem})
				return nil
			}
		}
		f, problem := checkFile(root, p, target, read)
		if problem != "" {
			problems = append(problems, &FileError{File: p, Reason: problem})
			return nil
		}
		if len(files) == MaxFiles {
			problems = append(problems, &FileError{File: p, Reason: fmt.Sprintf("more than %d policy files", MaxFiles)})
			return fs.SkipAll
		}
		if total += f.info.Size(); total > MaxDirBytes {
			problems = append(problems, &FileError{File: p, Reason: fmt.Sprintf("the policy files exceed %d bytes together", MaxDirBytes)})
			return fs.SkipAll
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		problems = append(problems, fmt.Errorf("read policy directory %s: %w", dir, err))
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return files, nil
}

// configMapLink is the link by which a ConfigMap volume points at its
// current version.
const configMapLink = "..data"

// Why a symbolic link is refused.
const (
	linkRefused         = "a symbolic link: policy files must be regular files in the policy directory (a Kubernetes ConfigMap volume's links are followed only with its layout enabled)"
	linkNotConfigMap    = "a symbolic link that is not a ConfigMap volume's (NAME -> ..data/NAME, at the top of the directory)"
	configMapLinkAbsent = "no ..data link: not a Kubernetes ConfigMap volume, so no symbolic link is followed"
)

// configMapData checks the ..data link of a ConfigMap volume and returns
// the hidden directory it leads to ("" when there is none: then no link is
// followed), or why the link is refused.
func configMapData(root *os.Root) (string, string) {
	info, err := root.Lstat(configMapLink)
	if errors.Is(err, fs.ErrNotExist) {
		return "", ""
	}
	if err != nil {
		return "", "unreadable: " + reason(err)
	}
	if info.Mode()&fs.ModeSymlink == 0 {
		return "", "not a symbolic link, as a ConfigMap volume's ..data is"
	}
	t, err := root.Readlink(configMapLink)
	if err != nil {
		return "", "unreadable: " + reason(err)
	}
	if !strings.HasPrefix(t, "..") || t == ".." || t == configMapLink || strings.ContainsAny(t, `/\`) {
		return "", fmt.Sprintf("leads to %q, not to a hidden directory ..VERSION beside it", t)
	}
	if info, err := root.Lstat(t); err != nil || !info.IsDir() {
		return "", fmt.Sprintf("leads to %q, which is not a directory", t)
	}
	return t, ""
}

// followLink resolves the symbolic link name as a ConfigMap volume's
// (NAME -> ..data/NAME, with cm the directory ..data leads to), or returns
// why it is refused.
func followLink(root *os.Root, name, cm string) (string, string) {
	if cm == "" {
		return "", linkRefused
	}
	if strings.Contains(name, "/") {
		return "", linkNotConfigMap
	}
	t, err := root.Readlink(name)
	if err != nil {
		return "", "unreadable: " + reason(err)
	}
	if t != configMapLink+"/"+name {
		return "", linkNotConfigMap
	}
	return cm + "/" + name, ""
}

// checkFile checks one policy file, name, found at target (name itself, or
// where its ConfigMap link leads), and reads it when read is set. It
// returns why the file is refused, or "".
func checkFile(root *os.Root, name, target string, read bool) (dirFile, string) {
	f := dirFile{name: name, target: target}
	info, err := root.Lstat(target) // never follows a link
	if err != nil {
		return f, "unreadable: " + reason(err)
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		return f, linkRefused
	}
	if problem := checkInfo(info); problem != "" {
		return f, problem
	}
	f.info = info
	if !read {
		return f, ""
	}
	// Opened without blocking, so that a file swapped for a FIFO since
	// the check cannot stall the load, and checked again once open: it
	// must be the very file checked, not a link or a file swapped in since
	// (os.Root would follow a link that stays inside the directory).
	h, err := root.OpenFile(target, os.O_RDONLY|openNonBlock, 0)
	if err != nil {
		return f, "unreadable: " + reason(err)
	}
	defer h.Close()
	opened, err := h.Stat()
	if err != nil {
		return f, "unreadable: " + err.Error()
	}
	if !os.SameFile(info, opened) {
		return f, "replaced while it was being read"
	}
	if problem := checkInfo(opened); problem != "" {
		return f, problem
	}
	f.info = opened
	if f.data, err = io.ReadAll(io.LimitReader(h, MaxFileBytes+1)); err != nil {
		return f, "unreadable: " + err.Error()
	}
	if len(f.data) > MaxFileBytes {
		return f, fmt.Sprintf("larger than %d bytes", MaxFileBytes)
	}
	return f, ""
}

// checkInfo refuses anything but a regular file of bounded size with no
// other hard links.
func checkInfo(info fs.FileInfo) string {
	switch m := info.Mode(); {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO), not a regular file"
	case m&fs.ModeDevice != 0:
		return "a device, not a regular file"
	case m&fs.ModeSocket != 0:
		return "a socket, not a regular file"
	case m.IsDir():
		return "a directory with a policy file's name"
	case !m.IsRegular():
		return "not a regular file"
	case info.Size() > MaxFileBytes:
		return fmt.Sprintf("larger than %d bytes", MaxFileBytes)
	case hardLinks(info) > 1:
		return "a file with other hard links (it may be a file from outside the policy directory)"
	}
	return ""
}

// reason is err without the path, which FileError already names.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
