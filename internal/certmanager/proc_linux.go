package certmanager

import (
	"os/exec"
	"syscall"
)

// setDeathSignal kills the controllers when the test binary dies (for example on a test timeout),
// which would otherwise leave them running.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
