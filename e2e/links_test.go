package e2e

// Every relative link of the repository's Markdown reaches a file, and every
// #anchor a heading of that file, as GitHub renders them.

import (
	"errors"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
)

// TestLinks follows every relative link and image of every *.md file in the
// repository (tracked, or new and not ignored).
func TestLinks(t *testing.T) {
	out, err := exec.Command("git", "-C", repoRoot, "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.md").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var files []string
	for _, f := range strings.Fields(string(out)) {
		if _, err := os.Stat(filepath.Join(repoRoot, f)); !errors.Is(err, fs.ErrNotExist) {
			files = append(files, f) // a deleted but still tracked file has no links
		}
	}
	if len(files) < 3 {
		t.Fatalf("found %d Markdown files (%v): the check read too little", len(files), files)
	}
	problems, followed := brokenLinks(os.DirFS(repoRoot), files)
	for _, problem := range problems {
		t.Error(problem)
	}
	if followed < 50 {
		t.Errorf("followed %d relative links in %v: the check read too little", followed, files)
	}
}

// The checker itself finds what it must, and only that.
func TestLinksCatchBrokenOnes(t *testing.T) {
	repo := map[string]string{
		"README.md": "# Top\n\n[ok](docs/a.md#second-part) [ok](docs/a.md#second-part-1) [ok](#top)\n" +
			"[missing file](docs/gone.md) [missing anchor](docs/a.md#nowhere)\n" +
			"[ok, outside](https://example.com/x#y) `[in code](nowhere.md)`\n" +
			"```sh\n[in a block](nowhere.md)\n```\n",
		"docs/a.md": "# A\n\n## Second part\n\n## Second part\n\n```sh\n# Not a heading\n```\n" +
			"[ok](../README.md) [ok, split\ntext](#a) [missing anchor](#not-a-heading)\n",
	}
	fsys := fstest.MapFS{}
	for name, text := range repo {
		fsys[name] = &fstest.MapFile{Data: []byte(text)}
	}
	got, followed := brokenLinks(fsys, []string{"README.md", "docs/a.md"})
	want := []string{
		"README.md:4: docs/gone.md: no such file",
		"README.md:4: docs/a.md#nowhere: docs/a.md has no heading #nowhere",
		"docs/a.md:11: #not-a-heading: docs/a.md has no heading #not-a-heading",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("brokenLinks found\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if followed != 8 {
		t.Errorf("brokenLinks followed %d relative links, want 8", followed)
	}
}

// brokenLinks returns, for each of files (paths in fsys), a line per
// relative link whose file does not exist or whose anchor is not a heading
// of that file, and how many relative links it followed.
func brokenLinks(fsys fs.FS, files []string) (problems []string, followed int) {
	anchors := map[string]map[string]bool{} // by file, read once
	anchorsOf := func(file string) (map[string]bool, error) {
		if a, ok := anchors[file]; ok {
			return a, nil
		}
		b, err := fs.ReadFile(fsys, file)
		if err != nil {
			return nil, err
		}
		a := map[string]bool{}
		for _, h := range headings(string(b)) {
			a[h.anchor] = true
		}
		anchors[file] = a
		return a, nil
	}
	for _, file := range files {
		b, err := fs.ReadFile(fsys, file)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		for _, l := range links(string(b)) {
			if scheme.MatchString(l.dest) {
				continue // http(s), mailto: not ours to check
			}
			followed++
			if problem := checkLink(fsys, file, l.dest, anchorsOf); problem != "" {
				problems = append(problems, file+":"+strconv.Itoa(l.line)+": "+l.dest+": "+problem)
			}
		}
	}
	return problems, followed
}

// checkLink says what is wrong with the relative link dest in file, or "".
func checkLink(fsys fs.FS, file, dest string, anchorsOf func(string) (map[string]bool, error)) string {
	target, anchor, _ := strings.Cut(dest, "#")
	target, err := url.PathUnescape(target)
	if err != nil {
		return "cannot read the path: " + err.Error()
	}
	if target == "" {
		target = file
	} else {
		target = path.Join(path.Dir(file), target)
	}
	if strings.HasPrefix(target, "../") {
		return "points outside the repository"
	}
	info, err := fs.Stat(fsys, target)
	if err != nil {
		return "no such file"
	}
	if anchor == "" {
		return ""
	}
	if info.IsDir() || !strings.HasSuffix(target, ".md") {
		if lineAnchor.MatchString(anchor) {
			return "" // GitHub's line anchors into source files
		}
		return "an anchor into " + target + ", which has no headings"
	}
	a, err := anchorsOf(target)
	if err != nil {
		return err.Error()
	}
	if !a[anchor] {
		return target + " has no heading #" + anchor
	}
	return ""
}

var (
	scheme     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	lineAnchor = regexp.MustCompile(`^L\d+(-L\d+)?$`)
	// An inline link or image: [text](dest "title"), the text holding at
	// most one level of brackets and spanning lines.
	inlineLink = regexp.MustCompile(`!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s<>()]*)>?(?:\s+"[^"]*")?\s*\)`)
	// A reference definition: [label]: dest
	refDefinition = regexp.MustCompile(`(?m)^ {0,3}\[[^\]]+\]:\s*<?([^\s<>]+)>?`)
)

type link struct {
	dest string
	line int
}

// links returns the link destinations of a Markdown text, outside code
// blocks and code spans.
func links(text string) []link {
	prose := blankCode(text)
	var out []link
	for _, re := range []*regexp.Regexp{inlineLink, refDefinition} {
		for _, m := range re.FindAllStringSubmatchIndex(prose, -1) {
			out = append(out, link{dest: prose[m[2]:m[3]], line: 1 + strings.Count(prose[:m[0]], "\n")})
		}
	}
	return out
}
