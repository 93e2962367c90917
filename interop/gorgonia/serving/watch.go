package serving

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// Watch reloads the model from path whenever the file there differs from the one the current
// model was loaded from (another file renamed over it, or its size or modification time
// changing), checking every interval, until ctx is done. If the current model did not come
// from path (or none is loaded), the file there is loaded at the first check. A failed reload
// is logged and retried at the next change; the current model stays. A federation driver that
// pulls each round's global model writes it to path (atomically, as wattagg's writer does) and
// the service picks it up.
//
// The comparison starts from the file the service loaded, not from the file at path when
// Watch starts, so a new model written between a Reload and the watcher's start is not missed.
func (s *Service) Watch(ctx context.Context, path string, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	last := s.loadedFile(path)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(path)
		if err != nil || sameVersion(last, fi) {
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

// loadedFile is what Reload recorded of the current model's file if it was loaded from path,
// else nil.
func (s *Service) loadedFile(path string) os.FileInfo {
	l := s.acquire()
	if l == nil {
		return nil
	}
	defer s.release(l)
	if l.info.Source != path {
		return nil
	}
	return l.file
}

// sameVersion says whether fi is the file last describes, unchanged.
func sameVersion(last, fi os.FileInfo) bool {
	return last != nil && os.SameFile(last, fi) && fi.Size() == last.Size() && fi.ModTime().Equal(last.ModTime())
}
