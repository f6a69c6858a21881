package conntrack

import (
	"math/rand/v2"
	"testing"
)

// TestParseFlowGarbage: truncated or random messages give an error or a
// skipped entry, never a panic.
func TestParseFlowGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		b := make([]byte, rng.IntN(96))
		for j := range b {
			b[j] = byte(rng.IntN(256))
		}
		// Bias towards plausible headers so nested parsing is reached.
		if len(b) >= 8 && i%2 == 0 {
			b[4], b[5], b[6], b[7] = byte(len(b)-4), 0, byte(1+rng.IntN(2)), 0x80
		}
		var f Flow
		_, _ = parseFlow(b, &f)
	}
	if _, err := parseFlow([]byte{2, 0}, &Flow{}); err == nil {
		t.Errorf("a 2-byte message parsed")
	}
	if _, err := parseFlow([]byte{2, 0, 0, 0}, &Flow{}); err == nil {
		t.Errorf("a message without tuples parsed")
	}
}
