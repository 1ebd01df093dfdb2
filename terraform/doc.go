// Package terraform holds what deploys a Handoff fleet in a cloud — the
// Terraform modules (modules/aws, modules/gcp, modules/azure), their
// examples, the cloud-init template and the systemd unit — and the offline
// checks that keep them equal to the code: every file parses, every
// variable and output says what it is, and each module grants exactly the
// cloud permissions its provider calls (providers/<cloud>.Permissions()),
// no more and no less. The checks need neither a cloud account nor the
// terraform binary.
//
// The permission lists in modules/<cloud>/permissions.auto.tf.json are
// generated from the providers' code; run `go generate ./terraform` after
// a provider starts calling something new.
package terraform

//go:generate go run ./internal/gen
