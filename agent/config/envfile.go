package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// maxEnvFileSize is the largest env file parseEnvFile reads. The file holds
// a handful of keys; anything bigger is a mistake (a log or a binary written
// over it) and is refused rather than parsed.
const maxEnvFileSize = 1 << 20

// EnvVar is one assignment read from an env file, with the line it starts on.
type EnvVar struct {
	Key   string
	Value string
	Line  int
}

// envFileError is a line of an env file that could not be parsed.
type envFileError struct {
	File string // as given to parseEnvFile; may be empty
	Line int    // 1-based; 0 when the problem is the file as a whole
	Msg  string
}

func (e *envFileError) Error() string {
	file := e.File
	if file == "" {
		file = "env file"
	}
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", file, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", file, e.Line, e.Msg)
}

// parseEnvFile reads assignments with the syntax systemd's EnvironmentFile=
// accepts: blank lines; comments starting with '#' or ';'; KEY=VALUE with
// white space trimmed around the key and around an unquoted value; single
// quotes (literal); double quotes (backslash escapes ", \, ` and $, and a
// backslash-newline continues the line); outside quotes a backslash escapes
// the next character and a backslash-newline continues the line. Quoted and
// unquoted pieces next to each other are joined, as in systemd.
//
// Where systemd silently skips a line (no '=', a key that is not a valid
// variable name, invalid UTF-8) or accepts an unterminated quote at the end
// of the file, parseEnvFile returns an *envFileError naming the line instead:
// a daemon that ignores half its configuration is worse than one that says
// so. A later assignment of a key replaces an earlier one. name is used only
// in error messages.
func parseEnvFile(name string, r io.Reader) ([]EnvVar, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxEnvFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > maxEnvFileSize {
		return nil, &envFileError{File: name, Msg: fmt.Sprintf("file is larger than %d bytes; it should hold a few KEY=VALUE lines", maxEnvFileSize)}
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return nil, &envFileError{File: name, Line: 1 + bytes.Count(data[:i], []byte{'\n'}), Msg: "contains a NUL byte; the file is not text"}
	}
	p := envParser{name: name, line: 1}
	return p.parse(data)
}

type envState int

const (
	stPreKey envState = iota
	stKey
	stPreValue
	stValue
	stValueEscape
	stSingle
	stDouble
	stDoubleEscape
	stComment
)

type envParser struct {
	name      string
	line      int // current line
	startLine int // line the current assignment started on
	quoteLine int // line the open quote started on
	key       strings.Builder
	value     strings.Builder
	// keyEnd and valueEnd mark where trailing white space starts (-1: none).
	keyEnd, valueEnd int
	out              []EnvVar
}

func isEnvNewline(c byte) bool    { return c == '\n' || c == '\r' }
func isEnvWhitespace(c byte) bool { return c == ' ' || c == '\t' || isEnvNewline(c) }

func (p *envParser) fail(line int, format string, args ...any) error {
	return &envFileError{File: p.name, Line: line, Msg: fmt.Sprintf(format, args...)}
}

func (p *envParser) parse(data []byte) ([]EnvVar, error) {
	st := stPreKey
	for _, c := range data {
		var err error
		switch st {
		case stPreKey, stKey:
			st, err = p.keyByte(st, c)
		case stPreValue, stValue, stValueEscape:
			st, err = p.valueByte(st, c)
		case stSingle, stDouble, stDoubleEscape:
			st = p.quotedByte(st, c)
		case stComment:
			// systemd ≥ 254 ends a comment at the newline even after a
			// backslash; so does this parser.
			if isEnvNewline(c) {
				p.line++
				st = stPreKey
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if err := p.end(st); err != nil {
		return nil, err
	}
	return p.out, nil
}

// keyByte reads c before the '=' of an assignment.
func (p *envParser) keyByte(st envState, c byte) (envState, error) {
	if st == stPreKey {
		switch {
		case c == '#' || c == ';':
			return stComment, nil
		case isEnvNewline(c):
			p.line++
		case c == '=': // no key at all; push reports it
			p.startLine = p.line
			p.key.Reset()
			p.value.Reset()
			p.keyEnd, p.valueEnd = -1, -1
			return stPreValue, nil
		case !isEnvWhitespace(c):
			p.startLine = p.line
			p.key.Reset()
			p.value.Reset()
			p.keyEnd = -1
			p.key.WriteByte(c)
			return stKey, nil
		}
		return st, nil
	}
	switch {
	case isEnvNewline(c):
		return st, p.noEquals()
	case c == '=':
		p.valueEnd = -1
		return stPreValue, nil
	default:
		if !isEnvWhitespace(c) {
			p.keyEnd = -1
		} else if p.keyEnd < 0 {
			p.keyEnd = p.key.Len()
		}
		p.key.WriteByte(c)
	}
	return st, nil
}

// valueByte reads c of an unquoted value, or between quoted pieces.
func (p *envParser) valueByte(st envState, c byte) (envState, error) {
	switch st {
	case stPreValue:
		switch {
		case isEnvNewline(c):
			if err := p.push(false); err != nil {
				return st, err
			}
			p.line++
			return stPreKey, nil
		case c == '\'':
			p.quoteLine = p.line
			return stSingle, nil
		case c == '"':
			p.quoteLine = p.line
			return stDouble, nil
		case c == '\\':
			return stValueEscape, nil
		case !isEnvWhitespace(c):
			p.value.WriteByte(c)
			return stValue, nil
		}
	case stValue:
		switch {
		case isEnvNewline(c):
			if err := p.push(true); err != nil {
				return st, err
			}
			p.line++
			return stPreKey, nil
		case c == '\\':
			p.valueEnd = -1
			return stValueEscape, nil
		default:
			if !isEnvWhitespace(c) {
				p.valueEnd = -1
			} else if p.valueEnd < 0 {
				p.valueEnd = p.value.Len()
			}
			p.value.WriteByte(c)
		}
	case stValueEscape:
		if isEnvNewline(c) {
			p.line++ // continuation: the newline is dropped
		} else {
			p.value.WriteByte(c)
		}
		return stValue, nil
	}
	return st, nil
}

// quotedByte reads c inside single or double quotes.
func (p *envParser) quotedByte(st envState, c byte) envState {
	switch st {
	case stSingle:
		if c == '\'' {
			return stPreValue
		}
		if c == '\n' {
			p.line++
		}
		p.value.WriteByte(c)
	case stDouble:
		switch c {
		case '"':
			return stPreValue
		case '\\':
			return stDoubleEscape
		default:
			if c == '\n' {
				p.line++
			}
			p.value.WriteByte(c)
		}
	case stDoubleEscape:
		switch c {
		case '"', '\\', '`', '$':
			p.value.WriteByte(c)
		case '\n':
			p.line++ // continuation
		default:
			p.value.WriteByte('\\')
			p.value.WriteByte(c)
		}
		return stDouble
	}
	return st
}

// end handles the end of the file in state st.
func (p *envParser) end(st envState) error {
	switch st {
	case stKey:
		return p.noEquals()
	case stSingle:
		return p.fail(p.quoteLine, "single quote opened here is never closed")
	case stDouble, stDoubleEscape:
		return p.fail(p.quoteLine, "double quote opened here is never closed")
	case stPreValue, stValueEscape:
		return p.push(false)
	case stValue:
		return p.push(true)
	}
	return nil
}

// push records the assignment being read. trimValue drops trailing white
// space from an unquoted value.
func (p *envParser) push(trimValue bool) error {
	key := p.key.String()
	if p.keyEnd >= 0 {
		key = key[:p.keyEnd]
	}
	value := p.value.String()
	if trimValue && p.valueEnd >= 0 {
		value = value[:p.valueEnd]
	}
	if err := validEnvName(key); err != nil {
		return p.fail(p.startLine, "%v%s", err, notShown)
	}
	if !utf8.ValidString(value) {
		return p.fail(p.startLine, "value of %s is not valid UTF-8", key)
	}
	for i := range p.out {
		if p.out[i].Key == key {
			p.out = append(p.out[:i], p.out[i+1:]...)
			break
		}
	}
	p.out = append(p.out, EnvVar{Key: key, Value: value, Line: p.startLine})
	return nil
}

// notShown ends every message about a line that could not be read: the
// line may hold a token (GHCR_TOKEN ghp_… with a blank or a colon instead
// of '='), so no part of it but a known key's name is ever repeated.
const notShown = " (the line is not shown: it may hold a secret)"

// knownKey is the name of a key the agent reads that s starts with, or "".
func knownKey(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "export ")
	s = strings.TrimLeft(s, " \t")
	for _, k := range keys() {
		if rest, ok := strings.CutPrefix(s, k); ok && (rest == "" || strings.ContainsRune(" \t:", rune(rest[0]))) {
			return k
		}
	}
	return ""
}

// noEquals is the error for a line without '=': it names the key when it
// is one the agent knows, never the rest of the line.
func (p *envParser) noEquals() error {
	if k := knownKey(p.key.String()); k != "" {
		return p.fail(p.startLine, "the line setting %s has no '='; write %s=VALUE%s", k, k, notShown)
	}
	return p.fail(p.startLine, "the line has no '='; write KEY=VALUE%s", notShown)
}

var errEmptyEnvName = errors.New("empty variable name before '='")

func validEnvName(key string) error {
	if key == "" {
		return errEmptyEnvName
	}
	if !utf8.ValidString(key) {
		return errors.New("the variable name is not valid UTF-8")
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		ok := c == '_' || ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || (i > 0 && '0' <= c && c <= '9')
		if !ok {
			if k := knownKey(key); k != "" {
				return fmt.Errorf("the name before '=' is not a valid variable name; write %s=VALUE", k)
			}
			if strings.HasPrefix(key, "export ") {
				return errors.New("the name before '=' is not a valid variable name; remove 'export'")
			}
			return errors.New("the name before '=' is not a valid variable name; use letters, digits and '_', not starting with a digit")
		}
	}
	return nil
}
