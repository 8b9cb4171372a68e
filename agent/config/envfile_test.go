package config

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
)

func TestParseEnvFile(t *testing.T) {
	type kv = map[string]string
	tests := []struct {
		name string
		in   string
		want kv
	}{
		{"empty", "", kv{}},
		{"blank lines and comments", "\n  \n# a comment\n; another\n   # indented\nA=1\n", kv{"A": "1"}},
		{"plain", "A=1\nB=two words\n", kv{"A": "1", "B": "two words"}},
		{"whitespace around key and value", "  A  =   x y  \t\n", kv{"A": "x y"}},
		{"empty value", "A=\nB=   \n", kv{"A": "", "B": ""}},
		{"no trailing newline", "A=1", kv{"A": "1"}},
		{"crlf", "A=1\r\nB=2\r\n", kv{"A": "1", "B": "2"}},
		{"single quotes are literal", `A='a "b" \n $c'`, kv{"A": `a "b" \n $c`}},
		{"double quotes", `A="a 'b' c"`, kv{"A": "a 'b' c"}},
		{"double-quote escapes", `A="q\" b\\ t\` + "`" + ` d\$ n\n"`, kv{"A": "q\" b\\ t` d$ n\\n"}},
		{"double-quote keeps white space", `A="  x  "`, kv{"A": "  x  "}},
		{"quoted pieces join", `A="a"'b'c`, kv{"A": "abc"}},
		{"white space after a closing quote is dropped", `A="a"  b`, kv{"A": "ab"}},
		{"unquoted escapes", `A=a\ b\\c\#`, kv{"A": `a b\c#`}},
		{"unquoted continuation", "A=one\\\ntwo\nB=3", kv{"A": "onetwo", "B": "3"}},
		{"double-quoted continuation", "A=\"one \\\ntwo\"\nB=3", kv{"A": "one two", "B": "3"}},
		{"double-quoted newline kept", "A=\"one\ntwo\"\n", kv{"A": "one\ntwo"}},
		{"hash inside a value is not a comment", "A=x#y\n", kv{"A": "x#y"}},
		{"later assignment wins", "A=1\nA=2\n", kv{"A": "2"}},
		{"equals in value", "A=b=c\n", kv{"A": "b=c"}},
		{"comment ends at newline even after backslash", "# note \\\nA=1\n", kv{"A": "1"}},
		{"utf-8 value", "A=héllo\n", kv{"A": "héllo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars, err := parseEnvFile("f.env", strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("parseEnvFile(%q): %v", tt.in, err)
			}
			got := kv{}
			for _, v := range vars {
				got[v.Key] = v.Value
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			for k, w := range tt.want {
				if g, ok := got[k]; !ok || g != w {
					t.Fatalf("%s = %q, want %q (all: %q)", k, g, w, got)
				}
			}
		})
	}
}

func TestParseEnvFileLineNumbers(t *testing.T) {
	in := "# header\n\nA=1\nB=\"multi\nline\"\nC=cont\\\ninued\nD=4\n"
	vars, err := parseEnvFile("f.env", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"A": 3, "B": 4, "C": 6, "D": 8}
	got := map[string]int{}
	for _, v := range vars {
		got[v.Key] = v.Line
	}
	if !maps.Equal(got, want) {
		t.Errorf("lines %v, want %v", got, want)
	}
}

func TestParseEnvFileErrors(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantLine int
		wantMsg  string
	}{
		{"no equals", "A=1\nJUSTAKEY\n", 2, `the line has no '='; write KEY=VALUE`},
		{"no equals at end", "A=1\nJUSTAKEY", 2, `the line has no '='`},
		{"known key, blank instead of '='", "GHCR_TOKEN ghp_s3cret\n", 1, `the line setting GHCR_TOKEN has no '='; write GHCR_TOKEN=VALUE`},
		{"known key, colon instead of '='", "A=1\n\nGHCR_TOKEN: ghp_s3cret\n", 3, `the line setting GHCR_TOKEN has no '='`},
		{"known key, blank, token with '='", "GHCR_TOKEN ghp_s3cret==\n", 1, `not a valid variable name; write GHCR_TOKEN=VALUE`},
		{"a token alone on a line", "ghp_s3cret\n", 1, `the line has no '='`},
		{"export prefix", "export A=1\n", 1, `not a valid variable name; remove 'export'`},
		{"key with a dash", "MY-KEY=1\n", 1, `not a valid variable name; use letters, digits and '_'`},
		{"key starting with a digit", "1A=1\n", 1, `not a valid variable name`},
		{"empty key", "=1\n", 1, "empty variable name"},
		{"unterminated double quote", "A=1\nB=\"open\nC=2\n", 2, "double quote opened here is never closed"},
		{"unterminated single quote", "A='open", 1, "single quote opened here is never closed"},
		{"invalid utf-8 value", "A=\xff\xfe\n", 1, "not valid UTF-8"},
		{"NUL byte", "A=1\nB=\x00\n", 2, "NUL byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseEnvFile("/etc/x.env", strings.NewReader(tt.in))
			var fe *envFileError
			if !errors.As(err, &fe) {
				t.Fatalf("want *envFileError, got %v", err)
			}
			if fe.Line != tt.wantLine || !strings.Contains(fe.Msg, tt.wantMsg) {
				t.Fatalf("got line %d %q, want line %d containing %q", fe.Line, fe.Msg, tt.wantLine, tt.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), fmt.Sprintf("/etc/x.env:%d:", tt.wantLine)) {
				t.Fatalf("error does not name the file and the line: %v", err)
			}
			// No error repeats what the line holds beyond a known key.
			for _, secret := range []string{"s3cret", "JUSTAKEY", "MY-KEY", "1A"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error repeats %q from the line: %v", secret, err)
				}
			}
		})
	}
}

func TestParseEnvFileTooLarge(t *testing.T) {
	big := "A=" + strings.Repeat("x", maxEnvFileSize) + "\n"
	_, err := parseEnvFile("big.env", strings.NewReader(big))
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("want a size error, got %v", err)
	}
}

// FuzzParseEnvFile checks that any input either parses or fails with an
// *envFileError, never panics, and that every value written back in single
// quotes (when it has none) parses to itself.
func FuzzParseEnvFile(f *testing.F) {
	for _, s := range []string{"A=1\n", `A="x\"y"`, "A='q'\n# c\n", "A=b\\\nc", "K", "=", "A=\"", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		vars, err := parseEnvFile("fuzz.env", strings.NewReader(in))
		if err != nil {
			var fe *envFileError
			if !errors.As(err, &fe) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for _, v := range vars {
			if validEnvName(v.Key) != nil {
				t.Fatalf("accepted invalid key %q", v.Key)
			}
			if strings.Contains(v.Value, "'") {
				continue
			}
			again, err := parseEnvFile("again.env", strings.NewReader(v.Key+"='"+v.Value+"'\n"))
			if err != nil || len(again) != 1 || again[0].Value != v.Value {
				t.Fatalf("value %q of %s does not round-trip: %v %v", v.Value, v.Key, again, err)
			}
		}
	})
}
