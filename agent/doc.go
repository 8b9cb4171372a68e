// Package agent owns what pull-agent keeps warm and how: the configuration
// (env file layered over the process environment), the image set it
// resolves to, and the puller that brings each image into the Docker daemon
// and proves it arrived with the digest the registry served.
package agent
