// Package datadir guards a data directory: one process at a time may use it. Two
// processes on one JetStream store, or a rebuild renaming the history file under a running
// archiver, lose acknowledged data; an exclusive lock makes the second one fail at once,
// naming the first.
package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked: another process holds the directory.
var ErrLocked = errors.New("the data directory is in use by another process")

// LockFile is the name of the lock inside the directory.
const LockFile = "mailpulse.lock"

// Lock is a held lock; the operating system releases it when the process ends, however it
// ends (kill -9 included), so a stale lock never blocks a restart.
type Lock struct{ f *os.File }

// Acquire creates dir if needed and locks it for this process, writing its PID and what it
// does (purpose) into the lock file for whoever finds it locked. A held lock gives an error
// wrapping ErrLocked that names the holder.
func Acquire(dir, purpose string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s (%s); stop it first, or give this one another data dir", ErrLocked, dir, describe(holder))
		}
		return nil, fmt.Errorf("data dir lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+" "+purpose+"\n"), 0)
	return &Lock{f: f}, nil
}

func describe(holder []byte) string {
	pid, purpose, _ := strings.Cut(strings.TrimSpace(string(holder)), " ")
	if pid == "" {
		return "held by a process that is still starting"
	}
	if purpose == "" {
		return "held by PID " + pid
	}
	return "held by PID " + pid + ", " + purpose
}

// Release unlocks the directory. It is safe to call on a nil Lock and more than once.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the descriptor releases the flock
	l.f = nil
	return err
}
