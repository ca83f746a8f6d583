package loadgen

import (
	"os/exec"
	"syscall"
)

// stopWithParent has Linux send the worker SIGTERM if the parent dies
// without closing its stdin (the pipe closes then too; this is the
// belt to those braces). Go does not end its threads while a process
// runs, so the thread that forked the worker lives as long as the parent.
func stopWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
