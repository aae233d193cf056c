package tiered

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound is returned by Get, and reported by GetMany by omission, when the key
	// is absent at the source: the Loader returned it (or an error wrapping it), or no
	// Loader is configured and neither tier holds the key. Absence reported by a Loader
	// is cached in both tiers for Options.NegativeTTL.
	ErrNotFound = errors.New("tiered: not found")

	// ErrClosed is returned by every method called after Close (after its arguments
	// are checked: an invalid key is ErrInvalidKey first).
	ErrClosed = errors.New("tiered: cache closed")

	// ErrInvalidKey is returned for an empty key or one longer than Options.MaxKeySize.
	ErrInvalidKey = errors.New("tiered: invalid key")

	// ErrValueTooLarge is returned by Set when the encoded value exceeds
	// Options.MaxValueSize. Nothing is written, and any cached copy of the key is
	// left as it was.
	ErrValueTooLarge = errors.New("tiered: value too large")
)

// PanicError is the error every caller waiting on a load receives when the Loader
// panics. The process survives; the panic is not cached.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the loader goroutine's stack at the panic
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("tiered: loader panicked: %v\n\n%s", e.Value, e.Stack)
}

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

func invalidKey(key string, max int) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	return fmt.Errorf("%w: %d bytes, more than MaxKeySize (%d)", ErrInvalidKey, len(key), max)
}
