package energy

import "fmt"

// NVML return codes the meters tell apart (nvmlReturn_t in nvml.h).
const (
	nvmlErrorNotSupported     = 3
	nvmlErrorNoPermission     = 4
	nvmlErrorDriverNotLoaded  = 9
	nvmlErrorLibraryNotFound  = 12
	nvmlErrorFunctionNotFound = 13
)

// nvmlError maps an NVML return code to the package's sentinels, with NVML's own words.
func nvmlError(call string, code int, words string) error {
	switch code {
	case nvmlErrorLibraryNotFound:
		return fmt.Errorf("%w: %s: libnvidia-ml.so.1 not found (no NVIDIA driver installed)", ErrUnavailable, call)
	case nvmlErrorDriverNotLoaded:
		return fmt.Errorf("%w: %s: the NVIDIA kernel driver is not loaded (libnvidia-ml.so.1 is installed, but there is no GPU or no running driver)", ErrUnavailable, call)
	case nvmlErrorNotSupported, nvmlErrorFunctionNotFound:
		return fmt.Errorf("%w: %s: %s", ErrNotSupported, call, words)
	case nvmlErrorNoPermission:
		return fmt.Errorf("%w: %s: %s", ErrNotReadable, call, words)
	}
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, call, words)
}
