package cli

import (
	"context"
	"runtime"
	"runtime/debug"
	"strconv"
)

// build is what "switchboard version" prints: the module's version and
// the commit it was built from, as the Go toolchain stamped them in the
// binary (runtime/debug.ReadBuildInfo).
type build struct {
	Module     string `json:"module"`
	Version    string `json:"version"`               // "(devel)" for a build of a checkout
	Commit     string `json:"commit,omitempty"`      // absent when built without version control
	CommitTime string `json:"commit_time,omitempty"` // RFC 3339
	Dirty      *bool  `json:"dirty,omitempty"`       // the checkout had uncommitted changes
	Go         string `json:"go"`
	Platform   string `json:"platform"` // GOOS/GOARCH
}

func readBuild() build {
	b := build{Version: "(devel)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Module = info.Main.Path
	if info.Main.Version != "" {
		b.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.CommitTime = s.Value
		case "vcs.modified":
			if dirty, err := strconv.ParseBool(s.Value); err == nil {
				b.Dirty = &dirty
			}
		}
	}
	return b
}

// buildVersion names the build in a User-Agent: a version, or "devel"
// (a product token holds no parentheses).
func buildVersion() string {
	if v := readBuild().Version; v != "(devel)" {
		return v
	}
	return "devel"
}

// versionFlags are the flags of "version".
type versionFlags struct{ json *bool }

func defineVersionFlags(f flags) versionFlags {
	return versionFlags{json: f.Bool("json", false, "print the build as one JSON object")}
}

func runVersion(_ context.Context, vf versionFlags, c call) error {
	b := readBuild()
	if *vf.json {
		return writeJSONDoc(c.Stdout, b)
	}
	commit := b.Commit
	if b.Dirty != nil && *b.Dirty {
		commit += " (dirty: uncommitted changes)"
	}
	return writeView(c.Stdout, []field{
		{"MODULE", b.Module}, {"VERSION", b.Version},
		{"COMMIT", commit}, {"COMMITTED", b.CommitTime},
		{"GO", b.Go}, {"PLATFORM", b.Platform},
	})
}
