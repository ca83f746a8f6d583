package e2e

// The repository's Markdown, read as GitHub renders it: its headings and
// their anchors, and its sections, whose examples other tests run as
// printed (docSection).

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// repoRoot is the repository, seen from this package's folder (go test runs
// a package's tests in its folder).
const repoRoot = ".."

var (
	codeSpan   = regexp.MustCompile("`[^`]+`")
	atxHeading = regexp.MustCompile(`^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$`)
	// A link in a heading, whose anchor keeps only its text.
	headingLink = regexp.MustCompile(`!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)`)
)

// blankCode replaces fenced code blocks and code spans with spaces, keeping
// every newline, so that what they show is not taken for links and line
// numbers stay true.
func blankCode(text string) string {
	lines := strings.SplitAfter(text, "\n")
	fence := ""
	for i, l := range lines {
		trimmed := strings.TrimLeft(l, " ")
		switch {
		case fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")):
			fence = trimmed[:3]
		case fence != "" && strings.HasPrefix(trimmed, fence):
			fence = ""
		case fence == "":
			continue
		}
		lines[i] = blank(l)
	}
	return codeSpan.ReplaceAllStringFunc(strings.Join(lines, ""), blank)
}

// blank keeps s's length in bytes, so that offsets into the blanked text
// are offsets into the original.
func blank(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] != '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

type heading struct {
	level  int
	text   string // as written, e.g. "Send a command: `POST /v1/jobs`"
	anchor string // as GitHub makes it, e.g. "send-a-command-post-v1jobs"
	start  int    // offset of the heading's line
	end    int    // offset of the line after it
}

// headings returns the ATX headings of a Markdown text, outside code blocks,
// with GitHub's anchors: the heading's text without its markup, lowercased,
// spaces to '-', punctuation but '-' and '_' dropped; a repeated anchor gets
// -1, -2, ...
func headings(text string) []heading {
	prose := blankCode(text)
	seen := map[string]int{}
	var out []heading
	end := 0
	for l := range strings.Lines(prose) {
		start := end
		end += len(l)
		if !atxHeading.MatchString(strings.TrimRight(l, "\n")) {
			continue // not a heading, or a line of a code block
		}
		// The text as written: prose has its code spans blanked.
		m := atxHeading.FindStringSubmatch(strings.TrimRight(text[start:end], "\n"))
		written := m[2]
		base := slug(written)
		anchor := base
		if n := seen[base]; n > 0 {
			anchor = base + "-" + strconv.Itoa(n)
		}
		seen[base]++
		out = append(out, heading{level: len(m[1]), text: written, anchor: anchor, start: start, end: end})
	}
	return out
}

// slug is GitHub's anchor of a heading's text.
func slug(text string) string {
	rendered := headingLink.ReplaceAllString(text, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(rendered) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// docSection returns the section of a Markdown file of the repository
// under the heading written exactly as want ("## Observability"), up to
// the next heading of the same level or above.
func docSection(t *testing.T, file, want string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, file))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	hs := headings(text)
	for i, h := range hs {
		if strings.Repeat("#", h.level)+" "+h.text != want {
			continue
		}
		end := len(text)
		for _, next := range hs[i+1:] {
			if next.level <= h.level {
				end = next.start
				break
			}
		}
		return text[h.end:end]
	}
	t.Fatalf("%s has no heading %q", file, want)
	return ""
}
