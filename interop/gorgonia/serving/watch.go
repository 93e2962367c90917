package serving

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// Watch reloads the model from path whenever the file there changes (another file renamed
// over it, or its size or modification time changing), checking every interval, until ctx
// is done. A failed reload is logged and retried at the next change; the current model stays.
// A federation driver that pulls each round's global model writes it to path (atomically, as
// wattagg's writer does) and the service picks it up.
func (s *Service) Watch(ctx context.Context, path string, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	last, _ := os.Stat(path)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(path)
		if err != nil || (last != nil && os.SameFile(last, fi) && fi.Size() == last.Size() && fi.ModTime().Equal(last.ModTime())) {
			continue
		}
		last = fi
		info, err := s.Reload(path)
		if err != nil {
			log.Error("model reload failed; serving the previous model", "path", path, "err", err)
			continue
		}
		log.Info("model reloaded", "path", path, "generation", info.Generation)
	}
}
