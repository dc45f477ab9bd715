package bench

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mailpulse/mailpulse/shared/poll"
)

// child is a mailpulse process a load command starts (this binary), so that its memory is
// its own and a file limit can be put on it.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// startChild runs this binary with args and env added to this process's environment, under
// "ulimit -n nofile" when nofile > 0, and waits until every health URL answers 200 (healthy
// tells whether they do).
func startChild(args, env []string, nofile int, healthy func() bool) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	line := "exec " + strconv.Quote(exe)
	for _, a := range args {
		line += " " + strconv.Quote(a)
	}
	if nofile > 0 {
		line = "ulimit -n " + strconv.Itoa(nofile) + " && " + line
	}
	c := &child{cmd: exec.Command("sh", "-c", line), done: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stdout, c.cmd.Stderr = io.Discard, os.Stderr
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	if !poll.Wait(60*time.Second, func() bool { return c.exited() || healthy() }) {
		c.stop()
		return nil, errors.New("mailpulse did not answer its health checks within 60 s")
	}
	if c.exited() {
		return nil, errors.New("mailpulse exited while starting")
	}
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop ends the process with SIGTERM, and SIGKILL after 30 s.
func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// rss is the process's resident memory, from /proc.
func (c *child) rss() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// watchRSS samples the resident memory until the returned function is called, which returns
// the peak.
func (c *child) watchRSS() func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if r := c.rss(); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 { close(stop); <-done; return peak.Load() }
}

// answers tells whether every URL answers 200 within 2 s.
func answers(client *http.Client, urls ...string) bool {
	for _, u := range urls {
		resp, err := client.Get(u)
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
	}
	return true
}
