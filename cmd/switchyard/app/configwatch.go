package app

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// configSettle is how long the config file's folder must be quiet before
// its content is compared.
var configSettle = 250 * time.Millisecond

// watchConfigFile reports on the returned channel when the content of the
// --config file differs from loaded, as kube-proxy exits when its
// configuration file is updated so that its DaemonSet restarts it with the
// new one. It watches the file's folder, so the symlink swap of a
// ConfigMap volume counts too. Events that leave the content as it was are
// ignored; a watch that cannot be set up is a warning.
func watchConfigFile(ctx context.Context, path string, loaded []byte, log *slog.Logger) <-chan error {
	changed := make(chan error, 1)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("cannot watch the config file for changes", "file", path, "err", err)
		return changed
	}
	if err := w.Add(filepath.Dir(path)); err != nil {
		w.Close()
		log.Warn("cannot watch the config file for changes", "file", path, "err", err)
		return changed
	}
	go func() {
		defer w.Close()
		// Compare once the folder has been quiet for a moment, not in the
		// middle of a write.
		settle := time.NewTimer(time.Hour)
		settle.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching the config file", "file", path, "err", err)
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				settle.Reset(configSettle)
			case <-settle.C:
				now, err := os.ReadFile(path)
				if err != nil || !bytes.Equal(now, loaded) {
					changed <- fmt.Errorf("the content of the configuration file %s was updated; exiting so that it is reloaded", path)
					return
				}
			}
		}
	}()
	return changed
}
