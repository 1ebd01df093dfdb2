package aws

import (
	"context"
	"fmt"
	"io"
	"strings"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// identity is where this node's resources go.
type identity struct {
	instanceID string
	eni        string
	region     string
}

// resolveIdentity fills what the settings leave out from IMDSv2: the
// instance ID, the primary interface (looked up by the instance's MAC) and
// the region (from the identity document). The IMDS client never falls
// back to IMDSv1: a node that cannot get a session token must not guess.
func resolveIdentity(ctx context.Context, s Settings, hc sdkaws.HTTPClient, t tuning) (identity, error) {
	id := identity{instanceID: s.InstanceID, eni: s.NetworkInterfaceID, region: s.Region}
	if id.instanceID != "" && id.eni != "" && id.region != "" {
		return id, nil
	}
	client := imds.New(imds.Options{
		Endpoint:       s.IMDSEndpoint,
		HTTPClient:     hc,
		EnableFallback: sdkaws.FalseTernary,
		Retryer:        newRetryer(t),
		// Otherwise the client swaps our backoff for its own (up to 1s).
		DisableDefaultMaxBackoff: true,
	})
	get := func(path string) (string, error) {
		out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return "", fmt.Errorf("reading %s from instance metadata: %w", path, translate(ctx, err))
		}
		defer out.Content.Close()
		b, err := io.ReadAll(io.LimitReader(out.Content, 4096))
		if err != nil {
			return "", fmt.Errorf("reading %s from instance metadata: %w", path, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	var err error
	if id.instanceID == "" {
		if id.instanceID, err = get("instance-id"); err != nil {
			return identity{}, err
		}
	}
	if id.eni == "" {
		mac, err := get("mac")
		if err != nil {
			return identity{}, err
		}
		if id.eni, err = get("network/interfaces/macs/" + mac + "/interface-id"); err != nil {
			return identity{}, err
		}
	}
	if id.region == "" {
		doc, err := client.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
		if err != nil {
			return identity{}, fmt.Errorf("reading the instance identity document: %w", translate(ctx, err))
		}
		if doc.InstanceID != "" && doc.InstanceID != id.instanceID {
			return identity{}, fmt.Errorf("instance identity document names %s, but this node is %s", doc.InstanceID, id.instanceID)
		}
		id.region = doc.Region
	}
	if id.region == "" || !strings.HasPrefix(id.instanceID, "i-") || !strings.HasPrefix(id.eni, "eni-") {
		return identity{}, fmt.Errorf("instance metadata gave instance %q, interface %q, region %q", id.instanceID, id.eni, id.region)
	}
	return id, nil
}
