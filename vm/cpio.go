package vm

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File type bits of a cpio mode, as in stat(2).
const (
	modeDir     = cpio.S_IFDIR
	modeFile    = cpio.S_IFREG
	modeSymlink = cpio.S_IFLNK
	modeChar    = cpio.S_IFCHR
	modeType    = cpio.S_IFMT
)

// CPIOWriter writes the initramfs as the "newc" (SVR4, no checksum) cpio
// archive the kernel unpacks. u-root's pkg/cpio encodes the records; this
// type adds what the initramfs builder needs on top, which u-root's writer
// does not do:
//
//   - A path added twice is an error, not silently dropped as u-root's
//     DedupWriter does: two different files at one path would mean a wrong
//     library or module in the guest. Directories may repeat.
//   - Parent directories are created first: the kernel's unpacker does not
//     create them, and drops an entry whose directory is missing.
//   - Has tells the builder what is already there.
//
// Every entry is owned by root, mtimes are zero and inode numbers count up
// in the order of addition, so the same inputs give the same bytes.
type CPIOWriter struct {
	bw  *bufio.Writer
	rw  cpio.RecordWriter
	ino uint64
	// seen maps each path written to its mode.
	seen map[string]uint32
}

// NewCPIOWriter starts an archive on w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	// u-root's writer makes several small writes per record.
	bw := bufio.NewWriterSize(w, 1<<20)
	return &CPIOWriter{bw: bw, rw: cpio.Newc.Writer(bw), seen: map[string]uint32{}}
}

func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("cpio: empty name %q", name)
	}
	return n, nil
}

// Files is the number of entries written so far.
func (c *CPIOWriter) Files() int { return len(c.seen) }

// Has reports whether name was already written, and its mode.
func (c *CPIOWriter) Has(name string) (uint32, bool) {
	n, err := cleanName(name)
	if err != nil {
		return 0, false
	}
	m, ok := c.seen[n]
	return m, ok
}

// add writes one entry. Adding a path again is an error unless both are
// directories, which is a no-op.
func (c *CPIOWriter) add(name string, mode uint32, data []byte, rmajor, rminor uint64) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if old, ok := c.seen[n]; ok {
		if old&modeType == modeDir && mode&modeType == modeDir {
			return nil
		}
		return fmt.Errorf("cpio: %s added twice", n)
	}
	c.seen[n] = mode
	c.ino++
	nlink := uint64(1)
	if mode&modeType == modeDir {
		nlink = 2
	}
	rec := cpio.StaticRecord(data, cpio.Info{Ino: c.ino, Mode: uint64(mode), NLink: nlink, Rmajor: rmajor, Rminor: rminor, Name: n})
	if err := c.rw.WriteRecord(rec); err != nil {
		return fmt.Errorf("cpio: %s: %w", n, err)
	}
	return nil
}

// Dir adds a directory.
func (c *CPIOWriter) Dir(name string, perm uint32) error {
	return c.add(name, modeDir|perm, nil, 0, 0)
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
	return c.add(name, modeFile|perm, data, 0, 0)
}

// Symlink adds a symbolic link, creating its parent directories.
func (c *CPIOWriter) Symlink(name, target string) error {
	if err := c.parents(name); err != nil {
		return err
	}
	return c.add(name, modeSymlink|0o777, []byte(target), 0, 0)
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm, major, minor uint32) error {
	if err := c.parents(name); err != nil {
		return err
	}
	return c.add(name, modeChar|perm, nil, uint64(major), uint64(minor))
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
	if err := cpio.WriteTrailer(c.rw); err != nil {
		return err
	}
	return c.bw.Flush()
}
