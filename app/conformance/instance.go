package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Settings a device instance runs with, as the contract's environment
// variables (zero: the variable is not set, the device's default holds).
type settings struct {
	minBackoff, maxBackoff time.Duration
	replacedDelay          time.Duration
	readTimeout            time.Duration
	pin                    bool // set SWITCHBOARD_PIN, and trust the impostor too
}

// fast is what most scenarios run with: small backoffs, to finish fast.
var fast = settings{minBackoff: 100 * time.Millisecond, maxBackoff: time.Second}

// instance is one running device process: the device command, through
// sh -c, in a process group of its own (so that a signal reaches the
// command even when sh did not exec it), its output in a log file.
type instance struct {
	id, secret string
	front      *front
	cmd        *exec.Cmd
	logPath    string
	done       chan struct{} // closed when it exited
	exitCode   int           // once done: its status, or -1 for a signal
}

// startInstance runs the device command as device id, through f.
func (r *runner) startInstance(sc *scenarioRun, id, devSecret string, f *front, set settings) (*instance, error) {
	logPath := filepath.Join(r.dir, "logs", id+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own copy
	caFile := r.sys.caFile
	env := []string{
		"SWITCHBOARD_URL=wss://" + f.addr + "/v1/connect",
		"SWITCHBOARD_DEVICE_ID=" + id,
		"SWITCHBOARD_DEVICE_SECRET=" + devSecret,
	}
	if set.pin {
		caFile = r.sys.pinCAFile
		env = append(env, "SWITCHBOARD_PIN="+r.sys.fingerprint)
	}
	env = append(env, "SWITCHBOARD_CA="+caFile)
	ms := func(name string, d time.Duration) {
		if d > 0 {
			env = append(env, name+"="+strconv.FormatInt(d.Milliseconds(), 10))
		}
	}
	ms("SWITCHBOARD_MIN_BACKOFF_MS", set.minBackoff)
	ms("SWITCHBOARD_MAX_BACKOFF_MS", set.maxBackoff)
	ms("SWITCHBOARD_REPLACED_DELAY_MS", set.replacedDelay)
	ms("SWITCHBOARD_READ_TIMEOUT_MS", set.readTimeout)

	cmd := exec.Command("sh", "-c", r.cfg.DeviceCmd)
	cmd.Dir = r.cfg.WorkDir
	// The suite's environment (PATH, NODE_PATH, a virtualenv's) without
	// SWITCHBOARD_ variables of its own, then the device's.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SWITCHBOARD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the device command: %w", err)
	}
	in := &instance{id: id, secret: devSecret, front: f, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // its status is what counts
		in.exitCode = cmd.ProcessState.ExitCode()
		close(in.done)
	}()
	sc.instances = append(sc.instances, in)
	return in, nil
}

// signal sends sig to the instance's process group.
func (in *instance) signal(sig syscall.Signal) {
	_ = syscall.Kill(-in.cmd.Process.Pid, sig)
}

// terminate asks the device to stop as a service manager would, with
// SIGTERM to the device command's processes: to the children of the sh
// that runs it, when it did not exec the command (dash does not), so that
// sh lives to exit with the device's status; else to sh, which is then
// the device.
func (in *instance) terminate() {
	children := childrenOf(in.cmd.Process.Pid)
	if len(children) == 0 {
		_ = in.cmd.Process.Signal(syscall.SIGTERM)
		return
	}
	for _, pid := range children {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
}

// childrenOf lists the processes whose parent is pid, from /proc (none
// where there is no /proc).
func childrenOf(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, path := range stats {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue // it exited meanwhile
		}
		// pid (comm) state ppid …: comm may hold spaces and parentheses.
		rest := raw[bytes.LastIndexByte(raw, ')')+1:]
		fields := strings.Fields(string(rest))
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == pid {
			child, err := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			if err == nil {
				out = append(out, child)
			}
		}
	}
	return out
}

// waitExit waits up to limit for the process to exit and returns its
// status.
func (in *instance) waitExit(ctx context.Context, limit time.Duration) (int, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-in.done:
		return in.exitCode, nil
	case <-t.C:
		return 0, fmt.Errorf("still running after %v", limit)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// stop ends the instance: SIGTERM, and SIGKILL to its whole group after
// 5 s.
func (in *instance) stop() {
	select {
	case <-in.done:
		return
	default:
	}
	in.terminate()
	if _, err := in.waitExit(context.Background(), 5*time.Second); err != nil {
		in.signal(syscall.SIGKILL)
		<-in.done
	}
	in.signal(syscall.SIGKILL) // whatever the device command left behind
}

// running reports whether the process has not exited.
func (in *instance) running() bool {
	select {
	case <-in.done:
		return false
	default:
		return true
	}
}

// tail returns the last n lines of the instance's log.
func (in *instance) tail(n int) string {
	raw, err := os.ReadFile(in.logPath)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(raw, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

var errExited = errors.New("the device process exited")
