package azure

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/handoffvpn/handoff/providers"
)

// permissionsAPIVersion of Microsoft.Authorization's permissions API.
const permissionsAPIVersion = "2022-04-01"

// permission is one entry of the permissions API: the actions a role grants
// at a scope, minus its notActions.
type permission struct {
	Actions    []string `json:"actions"`
	NotActions []string `json:"notActions"`
}

// permissionsAt lists the caller's permissions on scope (an ARM resource
// ID) through the SDK pipeline, so the call gets the same token, retries
// and timeouts as the rest.
func (p *Provider) permissionsAt(ctx context.Context, scope string) ([]permission, error) {
	next := runtime.JoinPaths(p.arm.Endpoint(), scope, "providers/Microsoft.Authorization/permissions") +
		"?api-version=" + permissionsAPIVersion
	var all []permission
	for page := 0; next != "" && page < 20; page++ {
		req, err := runtime.NewRequest(ctx, http.MethodGet, next)
		if err != nil {
			return nil, err
		}
		req.Raw().Header.Set("Accept", "application/json")
		resp, err := p.arm.Pipeline().Do(req)
		if err != nil {
			return nil, translate(err)
		}
		if !runtime.HasStatusCode(resp, http.StatusOK) {
			return nil, translate(runtime.NewResponseError(resp))
		}
		var body struct {
			Value    []permission `json:"value"`
			NextLink string       `json:"nextLink"`
		}
		if err := runtime.UnmarshalAsJSON(resp, &body); err != nil {
			return nil, fmt.Errorf("decoding permissions: %w", err)
		}
		all = append(all, body.Value...)
		next = body.NextLink
	}
	return all, nil
}

// allows reports whether some permission grants action: an Actions pattern
// matches and none of the same entry's NotActions does.
func allows(perms []permission, action string) bool {
	for _, p := range perms {
		granted := false
		for _, a := range p.Actions {
			if actionMatches(a, action) {
				granted = true
				break
			}
		}
		for _, n := range p.NotActions {
			if granted && actionMatches(n, action) {
				granted = false
			}
		}
		if granted {
			return true
		}
	}
	return false
}

// actionMatches matches an RBAC action pattern ("*" matches any run of
// characters, case-insensitive) against an action.
func actionMatches(pattern, action string) bool {
	pattern, action = strings.ToLower(pattern), strings.ToLower(action)
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == action
	}
	if !strings.HasPrefix(action, parts[0]) {
		return false
	}
	rest := action[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, mid)
		if i < 0 {
			return false
		}
		rest = rest[i+len(mid):]
	}
	return strings.HasSuffix(rest, last)
}

// requireActions checks, by reading the permissions API, that the caller
// may perform every action on scope. It fails closed: if the permissions
// cannot be read, the move does not start.
func (p *Provider) requireActions(ctx context.Context, scope string, actions ...string) error {
	perms, err := p.permissionsAt(ctx, scope)
	if err != nil {
		return fmt.Errorf("checking permissions on %s: %w", scope, err)
	}
	var missing []string
	for _, a := range actions {
		if !allows(perms, a) {
			missing = append(missing, a)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("credentials lack %s on %s: %w", strings.Join(missing, ", "), scope, providers.ErrPermission)
	}
	return nil
}
