// Command handoff is the Handoff failover orchestrator for IKEv2/IPsec
// gateway fleets: the agent daemon, the in-process demo, configuration
// validation and the cluster's TLS and key material.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: handoff <command> [flags]

commands:
  demo       run a three-node failover in this process (no cloud, no root)
  agent      run the agent daemon (-config FILE)
  validate   check a configuration file (-config FILE)
  tls        create a cluster CA (tls ca) or a node certificate (tls cert);
             print a certificate's serial for tls.deny_serials (tls show)
  emulator   serve the built-in cloud emulator (EC2, GCE, ARM + metadata)
  keygen     create a cluster key file (seals SA keys at rest), or with
             -for api-token / webhook-secret an API token or webhook secret
  version    print the build: version, VCS revision, Go version (-json)

  status, members, history, sa ls, promote, drain, operator raft, snapshot:
             operator commands over the agent's HTTP API ('handoff help' lists them)

Run 'handoff <command> -h' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil // the usage asked for is printed
	}
	return err
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{usage}
	}
	switch args[0] {
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "agent":
		return runAgent(ctx, args[1:], stdout, stderr)
	case "validate":
		return runValidate(ctx, args[1:], stdout, stderr)
	case "tls":
		return runTLS(args[1:], stdout)
	case "emulator":
		return runEmulator(ctx, args[1:], stdout)
	case "keygen":
		return runKeygen(args[1:], stdout)
	case "version", "-v", "--version":
		return runVersion(args[1:], stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		fmt.Fprint(stdout, "\n"+cliUsage)
		return nil
	case "status", "members", "history", "sa", "promote", "drain", "operator", "snapshot":
		return runCLI(ctx, args[0], args[1:], cliEnv{stdout: stdout, stderr: stderr, getenv: os.Getenv})
	}
	return usageError{fmt.Sprintf("handoff: unknown command %q\n\n%s", args[0], usage)}
}
