//go:build unix

package notify

import (
	"os/exec"
	"syscall"
)

// killGroup starts the command in a process group of its own and makes its
// timeout kill the whole group: a script's children (a `sleep`, a stuck
// `ip` call) would otherwise outlive it.
func killGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
