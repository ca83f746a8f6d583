//go:build !unix

package conntier

// openFilesLimit is a guess where there is no RLIMIT_NOFILE.
func openFilesLimit() int { return 1 << 14 }
