package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// What the commands print: tables (and views of one thing) for people,
// or JSON with -json, on stdout; what was done goes to stderr, in both
// modes. A -json list is one JSON array of the items, every page of them;
// a stream is JSON lines.

// got is one thing read: its value for people and, for -json, its JSON as
// the API wrote it (nil: v's, which has the same shape: the command line
// and the API marshal the same types).
type got[T any] struct {
	v   T
	raw json.RawMessage
}

func (g got[T]) writeJSON(w io.Writer) error {
	if g.raw != nil {
		return writeJSONDoc(w, g.raw)
	}
	return writeJSONDoc(w, g.v)
}

// writeJSONDoc writes one JSON document, indented for people who read it
// (jq reads it as well).
func writeJSONDoc(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine writes one JSON line, an event of a stream.
func writeJSONLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// jsonArray writes a JSON array an item at a time: a list of any length,
// printed as its pages arrive.
type jsonArray struct {
	w io.Writer
	n int
}

func (a *jsonArray) add(v any) error {
	var item bytes.Buffer
	if err := writeJSONDoc(&item, v); err != nil {
		return err
	}
	var indented bytes.Buffer
	if err := json.Indent(&indented, bytes.TrimSpace(item.Bytes()), "  ", "  "); err != nil {
		return err
	}
	sep := ",\n  "
	if a.n == 0 {
		sep = "[\n  "
	}
	a.n++
	_, err := fmt.Fprintf(a.w, "%s%s", sep, indented.Bytes())
	return err
}

func (a *jsonArray) close() error {
	end := "\n]\n"
	if a.n == 0 {
		end = "[]\n"
	}
	_, err := io.WriteString(a.w, end)
	return err
}

// table prints a list: a row per item under a header, or (-json) a JSON
// array of the items.
type table[T any] struct {
	tw  *tabwriter.Writer
	arr *jsonArray
	row func(T) []string
	n   int // items added
}

func newTable[T any](w io.Writer, asJSON bool, header []string, row func(T) []string) *table[T] {
	t := &table[T]{row: row}
	if asJSON {
		t.arr = &jsonArray{w: w}
		return t
	}
	t.tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	return t
}

// add prints an item: raw is its JSON as the API wrote it (nil: v's).
func (t *table[T]) add(v T, raw json.RawMessage) error {
	t.n++
	if t.arr != nil {
		if raw != nil {
			return t.arr.add(raw)
		}
		return t.arr.add(v)
	}
	_, err := fmt.Fprintln(t.tw, strings.Join(t.row(v), "\t"))
	return err
}

// addRaw adds an item of a list the API answered.
func (t *table[T]) addRaw(raw json.RawMessage) error {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("reading the edge's answer: %w", err)
	}
	return t.add(v, raw)
}

func (t *table[T]) close() error {
	if t.arr != nil {
		return t.arr.close()
	}
	return t.tw.Flush()
}

// field is a line of a view: a name and its value; a line whose value is
// "" is left out.
type field struct{ name, value string }

// writeView prints one thing for people, a field a line.
func writeView(w io.Writer, fields []field) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range fields {
		if f.value != "" {
			fmt.Fprintf(tw, "%s\t%s\n", f.name, f.value)
		}
	}
	return tw.Flush()
}

// compactJSON writes raw JSON on one line, for a table or a view; "" for
// none.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if len(raw) == 0 || json.Compact(&b, raw) != nil || b.String() == "null" {
		return ""
	}
	return b.String()
}

// finish closes a list, and says on stderr when -limit left items out
// (more).
func (t *table[T]) finish(stderr io.Writer, more bool, limit int) error {
	if err := t.close(); err != nil {
		return err
	}
	if more {
		fmt.Fprintf(stderr, "more follow: this is the first %d (-limit)\n", limit)
	}
	return nil
}
