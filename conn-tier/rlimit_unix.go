//go:build unix

package conntier

import "syscall"

// openFilesLimit is the process's open-files limit (RLIMIT_NOFILE; Go
// raises the soft limit to the hard one as it starts).
func openFilesLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<24 {
		return 1 << 16
	}
	return int(lim.Cur)
}
