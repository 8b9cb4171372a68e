package testbed

import (
	"context"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// CreateContainer creates (does not start) a container from image in the
// daemon at dockerHost and returns its ID.
func CreateContainer(ctx context.Context, dockerHost, image string) (string, error) {
	cli, err := client.NewClientWithOpts(client.WithHost(dockerHost), client.WithAPIVersionNegotiation())
	if err != nil {
		return "", err
	}
	defer cli.Close()
	res, err := cli.ContainerCreate(ctx, &container.Config{Image: image, Cmd: []string{"/bin/true"}}, nil, nil, nil, "")
	if err != nil {
		return "", err
	}
	return res.ID, nil
}
