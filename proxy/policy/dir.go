package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
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

// ReadDir reads the policy files of dir into memory and returns them as an
// fs.FS: the engine, `passport policy test|check` and the replay tool load
// a directory only through it. Policy files are .rego (tests included:
// callers filter them), .json, .yaml and .yml files; hidden files and
// directories and other files are ignored and never opened.
//
// A policy directory holds policies, nothing else. Each policy file must be
// a regular file inside the directory: a symbolic link is followed only
// while it stays inside (so a Kubernetes ConfigMap volume, whose files are
// relative links into a hidden ..data directory, loads), and one that
// leaves it, an absolute link, a FIFO, a device or a socket is refused;
// so is a file with other hard links (it may be a file from elsewhere) and
// a file over MaxFileBytes. Without these, a data.json linked to a secret
// elsewhere on the host would be loaded as policy data, and a policy could
// hand it to agents in its reasons. Every refused file is named in the
// returned error, with why.
func ReadDir(dir string) (fs.FS, error) {
	files, err := scanDir(dir, true)
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
	name string
	info fs.FileInfo // of the file itself, after any symbolic link
	data []byte      // when read
}

// scanDir lists the policy files of dir with what they resolve to, checks
// each, and reads them when read is set. The walk goes through os.Root, so
// no step of it, and no symbolic link it follows, leaves dir.
func scanDir(dir string, read bool) ([]dirFile, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("policy directory: %w", err)
	}
	defer root.Close()
	var files []dirFile
	var problems []error
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
		if d.IsDir() || !isPolicyName(p) {
			return nil
		}
		f, problem := checkFile(root, p, read)
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

// isPolicyName reports whether a file is part of a policy (Rego or data),
// tests included.
func isPolicyName(name string) bool {
	switch path.Ext(name) {
	case ".rego", ".json", ".yaml", ".yml":
		return true
	}
	return false
}

// checkFile checks one policy file and reads it when read is set. It
// returns why the file is refused, or "".
func checkFile(root *os.Root, name string, read bool) (dirFile, string) {
	f := dirFile{name: name}
	info, err := root.Stat(name) // follows symbolic links, never out of root
	switch {
	case err != nil && isEscape(root, name):
		return f, "a symbolic link that leads outside the policy directory (or is absolute)"
	case err != nil:
		return f, "unreadable: " + reason(err)
	}
	if problem := checkInfo(info); problem != "" {
		return f, problem
	}
	f.info = info
	if !read {
		return f, ""
	}
	// Opened without blocking, so that a file swapped for a FIFO since the
	// check cannot stall the load; checked again once open.
	h, err := root.OpenFile(name, os.O_RDONLY|openNonBlock, 0)
	if err != nil {
		return f, "unreadable: " + reason(err)
	}
	defer h.Close()
	if info, err = h.Stat(); err != nil {
		return f, "unreadable: " + err.Error()
	}
	if problem := checkInfo(info); problem != "" {
		return f, problem
	}
	f.info = info
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

// isEscape reports whether name is a symbolic link, or is reached through
// one, that os.Root refused to follow.
func isEscape(root *os.Root, name string) bool {
	for p := name; p != "." && p != "/"; p = path.Dir(p) {
		if info, err := root.Lstat(p); err == nil && info.Mode()&fs.ModeSymlink != 0 {
			return true
		}
	}
	return false
}

// reason is err without the path, which FileError already names.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
