package nodetune

import (
	"fmt"
	"os"
	"strconv"
)

// ApplyOOMScoreAdj writes value to /proc/self/oom_score_adj (procRoot ""
// means /proc), as kube-proxy's --oom-score-adj does for its own process.
// Lowering the value needs CAP_SYS_RESOURCE; callers treat an error as a
// warning.
func ApplyOOMScoreAdj(procRoot string, value int32) error {
	if value < -1000 || value > 1000 {
		return fmt.Errorf("oom_score_adj %d: want -1000 to 1000", value)
	}
	if procRoot == "" {
		procRoot = "/proc"
	}
	path := procRoot + "/self/oom_score_adj"
	if err := os.WriteFile(path, []byte(strconv.Itoa(int(value))), 0o644); err != nil {
		return fmt.Errorf("setting %s to %d: %w", path, value, err)
	}
	return nil
}
