//go:build !unix

package notify

import "os/exec"

// killGroup leaves the default: the timeout kills the command itself.
func killGroup(*exec.Cmd) {}
