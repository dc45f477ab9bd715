package datadir_test

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/mailpulse/mailpulse/shared/datadir"
)

func TestSecondHolderIsRefusedWithTheFirstNamed(t *testing.T) {
	dir := t.TempDir()
	l, err := datadir.Acquire(dir, "mailpulse all")
	if err != nil {
		t.Fatal(err)
	}
	_, err = datadir.Acquire(dir, "mailpulse archiver rebuild")
	if !errors.Is(err, datadir.ErrLocked) || !strings.Contains(err.Error(), "PID "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "mailpulse all") {
		t.Fatalf("second Acquire = %v, want ErrLocked naming this PID and its purpose", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := datadir.Acquire(dir, "again")
	if err != nil {
		t.Fatalf("Acquire after Release = %v", err)
	}
	l2.Release()
	l2.Release() // twice is fine
}

// A lock held by a process that was killed is released with it: no stale lock.
func TestLockOfAKilledProcessIsFree(t *testing.T) {
	if os.Getenv("DATADIR_HOLD") != "" {
		if _, err := datadir.Acquire(os.Getenv("DATADIR_HOLD"), "child"); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		select {} // held until killed
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockOfAKilledProcessIsFree$")
	cmd.Env = append(os.Environ(), "DATADIR_HOLD="+dir)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
		t.Fatalf("child did not take the lock: %q %v", buf, err)
	}
	if _, err := datadir.Acquire(dir, "parent"); !errors.Is(err, datadir.ErrLocked) {
		t.Fatalf("Acquire while the child holds it = %v, want ErrLocked", err)
	}
	_ = cmd.Process.Kill() // kill -9
	_ = cmd.Wait()
	l, err := datadir.Acquire(dir, "parent")
	if err != nil {
		t.Fatalf("Acquire after the holder was killed = %v", err)
	}
	l.Release()
}
