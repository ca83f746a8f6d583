//go:build !linux

package loadgen

import "os/exec"

// stopWithParent does nothing here: a worker stops when its stdin closes,
// which the parent's death does too.
func stopWithParent(*exec.Cmd) {}
