// Package pull owns bringing images into the Docker daemon: the Puller
// with its stall monitor and disk guard, the classes its failures fall
// into, and 'check', which asks the registry what a pull would get.
package pull
