//go:build unix

package httpserver

import "syscall"

// RaiseFileLimit raises the process's soft limit of open files to its hard limit and
// returns the new soft limit. Each connection is a file: a soft limit of 1,024 (a common
// default) is reached by a thousand idle clients, while the hard limit is usually far
// higher and ours to take.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= lim.Max {
		return uint64(lim.Cur), nil
	}
	old := lim.Cur
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return uint64(old), err
	}
	return uint64(lim.Cur), nil
}

// fileLimit is the soft limit of open files, or 0 when unknown.
func fileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return uint64(lim.Cur)
}
