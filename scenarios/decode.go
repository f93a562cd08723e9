package scenarios

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	yaml3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// Sentinel errors: every refusal wraps one, so callers and tests can tell
// what kind of input was refused without matching message text.
var (
	// ErrNotYAML: the file is not a YAML (or JSON) document at all.
	ErrNotYAML = errors.New("not a YAML scenario")
	// ErrUnknownKey: a key the format does not have (often a typo).
	ErrUnknownKey = errors.New("unknown key")
	// ErrType: a value of the wrong type (a word where a number goes).
	ErrType = errors.New("wrong type")
	// ErrRange: an address range no pod or Service can use.
	ErrRange = errors.New("unusable address range")
	// ErrName: not a valid Kubernetes name.
	ErrName = errors.New("invalid name")
	// ErrDuration: a duration that is negative or too long to be meant.
	ErrDuration = errors.New("duration out of range")
	// ErrInvalid: any other value out of its allowed range.
	ErrInvalid = errors.New("invalid value")
)

// MaxFileSize bounds a scenario file: a scenario is a page of YAML, and
// reading without a bound would let `--scenario /dev/zero` eat memory.
const MaxFileSize = 1 << 20

// FieldError is one refused field, named by its key path in the file
// (topology.podCIDR, services[0].name), never by a Go field name.
type FieldError struct {
	// Field is the key path; empty for the file as a whole.
	Field string
	// Line is the field's line in the file (0 when unknown, e.g. for a
	// value set by a flag).
	Line int
	Msg  string
	// Kind is one of the sentinel errors above.
	Kind error
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func (e *FieldError) Unwrap() error { return e.Kind }

func fieldErr(kind error, field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...), Kind: kind}
}

// readFile reads at most MaxFileSize bytes of path.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes: not a scenario file", MaxFileSize)
	}
	return b, nil
}

// lines maps every key path of a document to its line, so that errors
// found after decoding (by Validate) can point into the file.
type lines map[string]int

// decodeStrict decodes the YAML or JSON document b into v (a pointer to a
// struct with json tags) and refuses, with the key path and line: bytes
// that are not text, a second document, unknown or repeated keys, and
// values of the wrong type. The walk over the YAML node tree finds what
// encoding/json would otherwise report with Go type names and no line.
func decodeStrict(b []byte, v any) (lines, error) {
	if err := checkText(b); err != nil {
		return nil, err
	}
	dec := yaml3.NewDecoder(bytes.NewReader(b))
	var doc yaml3.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FieldError{Msg: "is empty: not a YAML scenario", Kind: ErrNotYAML}
		}
		return nil, yamlSyntaxErr(err)
	}
	var next yaml3.Node
	if err := dec.Decode(&next); err == nil {
		return nil, &FieldError{Line: next.Line, Msg: "holds a second YAML document (---): a scenario file holds one", Kind: ErrNotYAML}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlSyntaxErr(err)
	}
	ln := lines{}
	root := &doc
	if root.Kind == yaml3.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml3.MappingNode {
		return nil, &FieldError{Line: root.Line, Msg: fmt.Sprintf("is not a YAML mapping of keys (name:, topology:, ...) but %s", describeNode(root)), Kind: ErrNotYAML}
	}
	if err := walk(root, reflect.TypeOf(v).Elem(), "", ln, 0); err != nil {
		return nil, err
	}
	// The walk has checked keys and types; the strict decoder does the
	// conversion. Its errors are translated in case the two disagree
	// (YAML 1.1 vs 1.2 scalars, say).
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		return nil, translateDecodeErr(err, ln)
	}
	return ln, nil
}

// checkText refuses bytes that are not UTF-8 text (binary garbage, a
// compressed file): the YAML parser's own message has no position.
func checkText(b []byte) error {
	line := 1
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return &FieldError{Line: line, Msg: fmt.Sprintf("is not a text file (byte 0x%02x at offset %d is not UTF-8): not a YAML scenario", b[i], i), Kind: ErrNotYAML}
		case r < 0x20 && r != '\n' && r != '\t' && r != '\r', r == 0x7f:
			return &FieldError{Line: line, Msg: fmt.Sprintf("is not a text file (control byte 0x%02x at offset %d): not a YAML scenario", r, i), Kind: ErrNotYAML}
		case r == '\n':
			line++
		}
		i += size
	}
	return nil
}

// yamlSyntaxErr turns "yaml: line 3: mapping values are not allowed in
// this context" into a FieldError with the line.
func yamlSyntaxErr(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	fe := &FieldError{Kind: ErrNotYAML}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				fe.Line, msg = l, after
			}
		}
	}
	fe.Msg = "is not valid YAML: " + msg
	return fe
}

var durationType = reflect.TypeOf(Duration(0))

// maxDepth bounds the walk: the formats nest a few levels, so a deeper
// document is garbage (or an alias bomb) and is refused.
const maxDepth = 32

// walk checks node against type t at key path path.
func walk(n *yaml3.Node, t reflect.Type, path string, ln lines, depth int) error {
	if depth > maxDepth {
		return &FieldError{Field: path, Line: n.Line, Msg: "nests too deeply", Kind: ErrNotYAML}
	}
	if n.Kind == yaml3.AliasNode {
		if n.Alias == nil {
			return &FieldError{Field: path, Line: n.Line, Msg: "is an unresolved alias", Kind: ErrNotYAML}
		}
		return walk(n.Alias, t, path, ln, depth+1)
	}
	if n.Kind == yaml3.ScalarNode && n.ShortTag() == "!!null" {
		return nil // as in JSON: null leaves the zero value
	}
	typeErr := func() error {
		return &FieldError{Field: path, Line: n.Line, Msg: fmt.Sprintf("%s is not %s", describeNode(n), describeType(t)), Kind: ErrType}
	}
	if t == durationType {
		if n.Kind != yaml3.ScalarNode || n.ShortTag() != "!!str" {
			return typeErr()
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			return typeErr()
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return walk(n, t.Elem(), path, ln, depth+1)
	case reflect.Struct:
		if n.Kind != yaml3.MappingNode {
			return typeErr()
		}
		return walkMapping(n, t, path, ln, depth, map[string]int{})
	case reflect.Slice:
		if n.Kind != yaml3.SequenceNode {
			return typeErr()
		}
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			ln[p] = c.Line
			if err := walk(c, t.Elem(), p, ln, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if n.Kind != yaml3.ScalarNode {
		return typeErr()
	}
	tag := n.ShortTag()
	switch t.Kind() {
	case reflect.String:
		// Any scalar: sigs.k8s.io/yaml turns 123 into "123" for a string.
		if tag == "!!binary" {
			return typeErr()
		}
	case reflect.Bool:
		if tag != "!!bool" {
			return typeErr()
		}
	case reflect.Int, reflect.Int64, reflect.Int32:
		if tag != "!!int" {
			return typeErr()
		}
		var v int
		if err := yaml3.Unmarshal([]byte(n.Value), &v); err != nil {
			return &FieldError{Field: path, Line: n.Line, Msg: fmt.Sprintf("%s does not fit in an integer", n.Value), Kind: ErrType}
		}
	case reflect.Float64:
		if tag != "!!int" && tag != "!!float" {
			return typeErr()
		}
		var f float64
		if err := yaml3.Unmarshal([]byte(n.Value), &f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return &FieldError{Field: path, Line: n.Line, Msg: fmt.Sprintf("%s is not a finite number", n.Value), Kind: ErrType}
		}
	}
	return nil
}

// walkMapping checks a mapping's keys against struct t's json names and
// walks each value; seen holds the keys given so far (merge keys add to
// the same mapping).
func walkMapping(n *yaml3.Node, t reflect.Type, path string, ln lines, depth int, seen map[string]int) error {
	fields := jsonFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Tag == "!!merge" || (k.Kind == yaml3.ScalarNode && k.Value == "<<" && k.Style == 0) {
			// A merge key (<<: *defaults) adds another mapping's keys.
			m := val
			if m.Kind == yaml3.AliasNode && m.Alias != nil {
				m = m.Alias
			}
			if m.Kind != yaml3.MappingNode {
				return &FieldError{Field: path, Line: k.Line, Msg: "a merge key (<<) must name one mapping", Kind: ErrType}
			}
			if err := walkMapping(m, t, path, ln, depth+1, seen); err != nil {
				return err
			}
			continue
		}
		if k.Kind != yaml3.ScalarNode {
			return &FieldError{Field: path, Line: k.Line, Msg: fmt.Sprintf("a key must be a plain word, not %s", describeNode(k)), Kind: ErrType}
		}
		p := join(path, k.Value)
		ft, ok := fields[k.Value]
		if !ok {
			return &FieldError{Field: p, Line: k.Line, Msg: unknownKeyMsg(k.Value, fields, path), Kind: ErrUnknownKey}
		}
		if first, dup := seen[k.Value]; dup {
			return &FieldError{Field: p, Line: k.Line, Msg: fmt.Sprintf("is given twice (first at line %d)", first), Kind: ErrUnknownKey}
		}
		seen[k.Value] = k.Line
		ln[p] = k.Line
		if err := walk(val, ft, p, ln, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonFields maps a struct's json key names to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		out[cmpOr(name, f.Name)] = f.Type
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func unknownKeyMsg(key string, fields map[string]reflect.Type, path string) string {
	var known []string
	for k := range fields {
		known = append(known, k)
		if strings.EqualFold(k, key) {
			return fmt.Sprintf("is not a key (keys are case-sensitive: did you mean %s?)", k)
		}
	}
	sort.Strings(known)
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	return fmt.Sprintf("is not a key %s (known: %s)", where, strings.Join(known, ", "))
}

// describeNode says what a value is, for "X is not Y" messages.
func describeNode(n *yaml3.Node) string {
	switch n.Kind {
	case yaml3.MappingNode:
		return "a mapping"
	case yaml3.SequenceNode:
		return "a list"
	case yaml3.AliasNode:
		return "an alias"
	case yaml3.DocumentNode:
		return "a document"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "…"
	}
	return strconv.Quote(v)
}

// describeType says what a Go type is in the file's terms.
func describeType(t reflect.Type) string {
	if t == durationType {
		return `a duration such as "500ms" or "3s"`
	}
	switch t.Kind() {
	case reflect.Pointer:
		return describeType(t.Elem())
	case reflect.Struct:
		return "a mapping (key: value)"
	case reflect.Slice:
		return "a list such as [" + describeType(t.Elem()) + ", …]"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Float64, reflect.Float32:
		return "a number"
	}
	return t.Kind().String()
}

// translateDecodeErr rewrites what encoding/json says ("json: cannot
// unmarshal string into Go struct field Topology.topology.backends of type
// int") in the file's terms.
func translateDecodeErr(err error, ln lines) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return &FieldError{Field: te.Field, Line: ln[te.Field], Msg: fmt.Sprintf("a %s is not %s", te.Value, describeType(te.Type)), Kind: ErrType}
	}
	msg := err.Error()
	for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: ", "yaml: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return &FieldError{Msg: "cannot be decoded: " + msg, Kind: ErrType}
}

// locate fills in the line of a Validate error from the document's key
// paths: a FieldError's field, else the "path: " its text starts with.
func locate(err error, ln lines) (field string, line int) {
	var fe *FieldError
	if errors.As(err, &fe) && fe.Line > 0 {
		return fe.Field, fe.Line
	}
	// The text starts with the full key path, also when a FieldError was
	// wrapped by an enclosing path (steps[2].probe.duration).
	field, _, _ = strings.Cut(err.Error(), ": ")
	// The closest enclosing key that the file has: services[1].ports[0]
	// for services[1].ports[0].name when name was left out.
	for f := field; f != ""; {
		if l, ok := ln[f]; ok {
			return field, l
		}
		i := strings.LastIndexAny(f, ".[")
		if i < 0 {
			break
		}
		f = f[:i]
	}
	return field, 0
}

// fileError formats err (one error, or errors.Join of several) as lines
// "source:line: field: message", after prefix.
func fileError(prefix, source string, err error, ln lines) error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	where := func(e error) string {
		if _, l := locate(e, ln); l > 0 {
			return fmt.Sprintf("%s:%d", source, l)
		}
		return source
	}
	if len(errs) == 1 {
		return &SourceError{Text: fmt.Sprintf("%s %s: %v", prefix, where(errs[0]), errs[0]), Errs: errs}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d problems:", prefix, source, len(errs))
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  %s: %v", where(e), e)
	}
	return &SourceError{Text: b.String(), Errs: errs}
}

// SourceError is a refused file: its text names the file and lines, and
// it wraps every FieldError (errors.Is finds their sentinels).
type SourceError struct {
	Text string
	Errs []error
}

func (e *SourceError) Error() string   { return e.Text }
func (e *SourceError) Unwrap() []error { return e.Errs }
