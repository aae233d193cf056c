//go:build linux

package main

import "syscall"

// sysProcAttr puts a replica in its own process group, so that a Ctrl-C in the
// terminal reaches only the demo, which stops the replicas itself, and has the
// kernel kill it if the demo dies without stopping it (Pdeathsig).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
