// Command credhelper is a Docker credential helper for tests. Installed
// (or linked) as docker-credential-<mode>, it behaves by mode:
//
//	docker-credential-pa-good     answers with TESTHELPER_USER/TESTHELPER_SECRET
//	docker-credential-pa-token    answers with an identity token (Username "<token>")
//	docker-credential-pa-none     "credentials not found in native keychain", exit 1
//	docker-credential-pa-garbage  prints something that is not JSON, exit 0
//	docker-credential-pa-fail     prints an error, exit 1
//	docker-credential-pa-hang     never answers
//
// Every call appends "<mode> <action> <server>" to $TESTHELPER_LOG if set.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	mode := strings.TrimPrefix(filepath.Base(os.Args[0]), "docker-credential-")
	action := ""
	if len(os.Args) > 1 {
		action = os.Args[1]
	}
	in, _ := io.ReadAll(os.Stdin)
	server := strings.TrimSpace(string(in))
	if p := os.Getenv("TESTHELPER_LOG"); p != "" {
		if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			fmt.Fprintf(f, "%s %s %s\n", mode, action, server)
			f.Close()
		}
	}
	if action != "get" {
		fmt.Println("only get is supported")
		os.Exit(1)
	}
	switch mode {
	case "pa-good":
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"ServerURL": server, "Username": os.Getenv("TESTHELPER_USER"), "Secret": os.Getenv("TESTHELPER_SECRET")})
	case "pa-token":
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"ServerURL": server, "Username": "<token>", "Secret": os.Getenv("TESTHELPER_SECRET")})
	case "pa-none":
		fmt.Println("credentials not found in native keychain")
		os.Exit(1)
	case "pa-garbage":
		fmt.Println("<<<this is not json>>> " + os.Getenv("TESTHELPER_SECRET"))
	case "pa-fail":
		fmt.Println("the keychain is locked")
		os.Exit(1)
	case "pa-hang":
		time.Sleep(time.Hour)
	default:
		fmt.Println("unknown mode " + mode)
		os.Exit(1)
	}
}
