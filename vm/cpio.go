package vm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// File type bits of a cpio mode, as in stat(2).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
	modeType    = 0o170000
)

// CPIOEntry is one member of a newc cpio archive.
type CPIOEntry struct {
	// Name is the path without a leading "/".
	Name string
	// Mode holds the type bits and the permissions.
	Mode uint32
	// Data is a file's content or a symlink's target.
	Data []byte
	// RdevMajor and RdevMinor are a device node's numbers.
	RdevMajor, RdevMinor uint32
}

// CPIOWriter writes the "newc" (SVR4, no checksum) cpio format that the
// kernel unpacks an initramfs from. Every entry is owned by root, and
// mtimes are zero so the same inputs give the same bytes.
type CPIOWriter struct {
	w   *bufio.Writer
	ino uint32
	off int64
	// seen lets the initramfs builder add a path more than once (shared
	// libraries, parent directories) without duplicating it.
	seen map[string]uint32
}

// NewCPIOWriter starts an archive on w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: bufio.NewWriterSize(w, 1<<20), seen: map[string]uint32{}}
}

func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("cpio: empty name %q", name)
	}
	return n, nil
}

// Has reports whether name was already written, and its mode.
func (c *CPIOWriter) Has(name string) (uint32, bool) {
	n, err := cleanName(name)
	if err != nil {
		return 0, false
	}
	m, ok := c.seen[n]
	return m, ok
}

// Add writes one entry. Adding a path again is an error unless both are
// directories, which is a no-op.
func (c *CPIOWriter) Add(e CPIOEntry) error {
	n, err := cleanName(e.Name)
	if err != nil {
		return err
	}
	if old, ok := c.seen[n]; ok {
		if old&modeType == modeDir && e.Mode&modeType == modeDir {
			return nil
		}
		return fmt.Errorf("cpio: %s added twice", n)
	}
	c.seen[n] = e.Mode
	c.ino++
	nlink := 1
	if e.Mode&modeType == modeDir {
		nlink = 2
	}
	return c.write(n, e.Mode, nlink, e.Data, e.RdevMajor, e.RdevMinor)
}

func (c *CPIOWriter) write(name string, mode uint32, nlink int, data []byte, rmaj, rmin uint32) error {
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	if _, err := c.w.WriteString(hdr + name + "\x00"); err != nil {
		return err
	}
	c.off += int64(len(hdr) + len(name) + 1)
	if err := c.pad(); err != nil {
		return err
	}
	if _, err := c.w.Write(data); err != nil {
		return err
	}
	c.off += int64(len(data))
	return c.pad()
}

func (c *CPIOWriter) pad() error {
	if r := c.off % 4; r != 0 {
		if _, err := c.w.Write(make([]byte, 4-r)); err != nil {
			return err
		}
		c.off += 4 - r
	}
	return nil
}

// Dir adds a directory.
func (c *CPIOWriter) Dir(name string, perm uint32) error {
	return c.Add(CPIOEntry{Name: name, Mode: modeDir | perm})
}

// MkdirAll adds name and every missing parent directory (mode 0755).
func (c *CPIOWriter) MkdirAll(name string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if d := path.Dir(n); d != "." {
		if err := c.MkdirAll(d); err != nil {
			return err
		}
	}
	if m, ok := c.seen[n]; ok {
		if m&modeType != modeDir {
			return fmt.Errorf("cpio: %s is not a directory", n)
		}
		return nil
	}
	return c.Dir(n, 0o755)
}

// File adds a regular file, creating its parent directories.
func (c *CPIOWriter) File(name string, perm uint32, data []byte) error {
	if err := c.parents(name); err != nil {
		return err
	}
	return c.Add(CPIOEntry{Name: name, Mode: modeFile | perm, Data: data})
}

// Symlink adds a symbolic link, creating its parent directories.
func (c *CPIOWriter) Symlink(name, target string) error {
	if err := c.parents(name); err != nil {
		return err
	}
	return c.Add(CPIOEntry{Name: name, Mode: modeSymlink | 0o777, Data: []byte(target)})
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm, major, minor uint32) error {
	if err := c.parents(name); err != nil {
		return err
	}
	return c.Add(CPIOEntry{Name: name, Mode: modeChar | perm, RdevMajor: major, RdevMinor: minor})
}

func (c *CPIOWriter) parents(name string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if d := path.Dir(n); d != "." {
		return c.MkdirAll(d)
	}
	return nil
}

// Close writes the trailer and flushes; it does not close the underlying
// writer.
func (c *CPIOWriter) Close() error {
	c.ino++
	if err := c.write("TRAILER!!!", 0, 1, nil, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

// ReadCPIO reads a newc archive up to its trailer.
func ReadCPIO(r io.Reader) ([]CPIOEntry, error) {
	br := bufio.NewReader(r)
	var off int64
	skip := func() error {
		if p := (4 - off%4) % 4; p != 0 {
			if _, err := io.CopyN(io.Discard, br, p); err != nil {
				return err
			}
			off += p
		}
		return nil
	}
	var out []CPIOEntry
	for {
		hdr := make([]byte, 110)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return nil, fmt.Errorf("cpio: header at %d: %w", off, err)
		}
		off += 110
		if string(hdr[:6]) != "070701" {
			return nil, fmt.Errorf("cpio: bad magic %q at %d", hdr[:6], off-110)
		}
		field := func(i int) (uint32, error) {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			return uint32(v), err
		}
		var f [13]uint32
		for i := range f {
			v, err := field(i)
			if err != nil {
				return nil, fmt.Errorf("cpio: header field %d at %d: %w", i, off-110, err)
			}
			f[i] = v
		}
		name := make([]byte, f[11])
		if _, err := io.ReadFull(br, name); err != nil {
			return nil, fmt.Errorf("cpio: name: %w", err)
		}
		off += int64(len(name))
		if len(name) == 0 || name[len(name)-1] != 0 {
			return nil, errors.New("cpio: name not NUL-terminated")
		}
		if err := skip(); err != nil {
			return nil, err
		}
		data := make([]byte, f[6])
		if _, err := io.ReadFull(br, data); err != nil {
			return nil, fmt.Errorf("cpio: data of %s: %w", name[:len(name)-1], err)
		}
		off += int64(len(data))
		if err := skip(); err != nil {
			return nil, err
		}
		n := string(name[:len(name)-1])
		if n == "TRAILER!!!" {
			return out, nil
		}
		out = append(out, CPIOEntry{Name: n, Mode: f[1], Data: data, RdevMajor: f[9], RdevMinor: f[10]})
	}
}
