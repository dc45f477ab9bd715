//go:build !unix

package httpserver

// RaiseFileLimit does nothing where there is no RLIMIT_NOFILE; it returns 0.
func RaiseFileLimit() (uint64, error) { return 0, nil }

func fileLimit() uint64 { return 0 }
