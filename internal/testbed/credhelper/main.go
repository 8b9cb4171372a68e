// Command credhelper is a Docker credential helper for tests. Installed
// (or linked) as docker-credential-<mode>, it behaves by mode:
//
//	docker-credential-pa-good     answers with the configured user and secret
//	docker-credential-pa-token    answers with an identity token (Username "<token>")
//	docker-credential-pa-wrong    answers with the configured user and a wrong secret
//	docker-credential-pa-elsewhere answers as pa-good, for another server URL
//	docker-credential-pa-none     "credentials not found in native keychain", exit 1
//	docker-credential-pa-garbage  prints something that is not JSON (with the secret), exit 0
//	docker-credential-pa-fail     prints an error, exit 1
//	docker-credential-pa-hang     never answers
//	docker-credential-pa-leak     prints the credentials JSON, then exits 1
//	docker-credential-pa-killed   prints the credentials JSON, then is killed (SIGKILL)
//	docker-credential-pa-envdump  writes its environment to the configured
//	                              file, then answers as pa-good
//
// The agent runs helpers with a minimal environment, so the helper reads
// its settings from testhelper.json beside its executable (written by
// testbed.ConfigureCredentialHelpers); TESTHELPER_USER, TESTHELPER_SECRET,
// TESTHELPER_LOG and TESTHELPER_ENVDUMP override it when set. Every call
// appends "<mode> <action> <server>" to the log file, if one is set.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// config is testhelper.json.
type config struct {
	User    string `json:"user"`
	Secret  string `json:"secret"`
	Log     string `json:"log"`
	EnvDump string `json:"env_dump"`
}

func load() config {
	var c config
	if exe, err := os.Executable(); err == nil {
		if data, err := os.ReadFile(filepath.Join(filepath.Dir(exe), "testhelper.json")); err == nil {
			_ = json.Unmarshal(data, &c)
		}
	}
	for _, o := range []struct {
		key string
		to  *string
	}{{"TESTHELPER_USER", &c.User}, {"TESTHELPER_SECRET", &c.Secret}, {"TESTHELPER_LOG", &c.Log}, {"TESTHELPER_ENVDUMP", &c.EnvDump}} {
		if v := os.Getenv(o.key); v != "" {
			*o.to = v
		}
	}
	return c
}

func main() {
	mode := strings.TrimPrefix(filepath.Base(os.Args[0]), "docker-credential-")
	c := load()
	action := ""
	if len(os.Args) > 1 {
		action = os.Args[1]
	}
	in, _ := io.ReadAll(os.Stdin)
	server := strings.TrimSpace(string(in))
	if p := c.Log; p != "" {
		if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			fmt.Fprintf(f, "%s %s %s\n", mode, action, server)
			f.Close()
		}
	}
	if action != "get" {
		fmt.Println("only get is supported")
		os.Exit(1)
	}
	answer := func(url, secret string) {
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"ServerURL": url, "Username": c.User, "Secret": secret})
	}
	creds := func() { answer(server, c.Secret) }
	switch mode {
	case "pa-good":
		creds()
	case "pa-wrong":
		answer(server, c.Secret+"-wrong")
	case "pa-elsewhere":
		answer("https://elsewhere.example.test", c.Secret)
	case "pa-token":
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"ServerURL": server, "Username": "<token>", "Secret": c.Secret})
	case "pa-none":
		fmt.Println("credentials not found in native keychain")
		os.Exit(1)
	case "pa-garbage":
		fmt.Println("<<<this is not json>>> " + c.Secret)
	case "pa-fail":
		fmt.Println("the keychain is locked")
		os.Exit(1)
	case "pa-hang":
		time.Sleep(time.Hour)
	case "pa-leak":
		creds()
		os.Exit(1)
	case "pa-killed":
		creds()
		_ = os.Stdout.Sync()
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	case "pa-envdump":
		if c.EnvDump != "" {
			_ = os.WriteFile(c.EnvDump, []byte(strings.Join(os.Environ(), "\n")+"\n"), 0o600)
		}
		creds()
	default:
		fmt.Println("unknown mode " + mode)
		os.Exit(1)
	}
}
