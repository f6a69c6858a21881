package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// EchoPackage is the import path of the echo server command.
const EchoPackage = "github.com/switchyard-proxy/switchyard/test/echo/cmd/swy-echo"

var echoBuild struct {
	once sync.Once
	path string
	err  error
}

// EchoBinary builds the swy-echo command once per test binary and returns
// its path; $SWY_ECHO_BIN, when set, names one built beforehand (make
// test-vm builds it on the host: compiling under the VM's emulation is
// slow). The binary lives at one fixed place in the OS temp folder
// (swy-echo-build/swy-echo, replaced atomically by each build), so repeated
// runs leave at most one small file behind. The `go` tool must be on PATH,
// under $GOROOT/bin or at /usr/local/go/bin.
func EchoBinary(t testing.TB) string {
	t.Helper()
	echoBuild.once.Do(func() {
		if p := os.Getenv("SWY_ECHO_BIN"); p != "" {
			if _, err := os.Stat(p); err != nil {
				echoBuild.err = fmt.Errorf("SWY_ECHO_BIN: %w", err)
			}
			echoBuild.path = p
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			if root := os.Getenv("GOROOT"); root != "" {
				goTool = filepath.Join(root, "bin", "go")
			} else if _, serr := os.Stat("/usr/local/go/bin/go"); serr == nil {
				goTool = "/usr/local/go/bin/go"
			} else {
				echoBuild.err = fmt.Errorf("go tool not found to build %s: %w", EchoPackage, err)
				return
			}
		}
		dir := filepath.Join(os.TempDir(), "swy-echo-build")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			echoBuild.err = fmt.Errorf("folder for swy-echo: %w", err)
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf("swy-echo.%d", os.Getpid()))
		cmd := exec.Command(goTool, "build", "-o", tmp, EchoPackage)
		if b, err := cmd.CombinedOutput(); err != nil {
			_ = os.Remove(tmp)
			echoBuild.err = fmt.Errorf("go build %s: %w: %s", EchoPackage, err, b)
			return
		}
		out := filepath.Join(dir, "swy-echo")
		if err := os.Rename(tmp, out); err != nil {
			echoBuild.err = fmt.Errorf("install swy-echo: %w", err)
			return
		}
		echoBuild.path = out
	})
	if echoBuild.err != nil {
		t.Fatalf("lab: %v", echoBuild.err)
	}
	return echoBuild.path
}
