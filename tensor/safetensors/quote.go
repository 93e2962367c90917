package safetensors

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxQuote is about how many characters of an offending value an error quotes: a hostile
// header can hold a 100 MB name or number, and an error is one line for a log.
const maxQuote = 200

// quote is strconv.Quote of s, with the middle of a long s elided:
// "abc…xyz" (12345678 bytes). The cuts fall on rune boundaries.
func quote(s string) string {
	if len(s) <= maxQuote {
		return strconv.Quote(s)
	}
	i, j := maxQuote/2, len(s)-maxQuote/2
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	for j < len(s) && !utf8.RuneStart(s[j]) {
		j++
	}
	head, tail := s[:i], s[j:]
	q := strconv.Quote(head + "…" + tail)
	return q + " (" + strconv.Itoa(len(s)) + " bytes)"
}

// elide is s itself when short, else its ends around "…"; for raw JSON text, which is
// quoted or not by the caller.
func elide(s string) string {
	if len(s) <= maxQuote {
		return s
	}
	return s[:maxQuote/2] + "…(" + strconv.Itoa(len(s)) + " bytes)…" + s[len(s)-maxQuote/2:]
}

// formatShape formats a shape as fmt's %v does, with the middle of a long one elided.
func formatShape(shape []int) string {
	const ends = 8
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range shape {
		if i == ends && len(shape) > 2*ends {
			b.WriteString(" … (" + strconv.Itoa(len(shape)) + " dims) …")
			continue
		}
		if i > ends && i < len(shape)-ends && len(shape) > 2*ends {
			continue
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(d))
	}
	b.WriteByte(']')
	return b.String()
}
