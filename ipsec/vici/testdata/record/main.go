// Command record re-records the VICI transcripts in ipsec/vici/testdata
// from a real charon. It runs inside the UML lab in the gateway's network
// namespace, with a client charon that can initiate to it:
//
//	record -gw /run/gw1/charon.vici -client /run/client/charon.vici -out session.transcript
//
// It proxies its own session through vicitest.Recorder and performs the
// same sequence of commands the tests replay (TestRecordedSession).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/vici/vicitest"
)

func main() {
	gw := flag.String("gw", "/run/gw1/charon.vici", "gateway charon's VICI socket")
	client := flag.String("client", "/run/client/charon.vici", "client charon's VICI socket")
	out := flag.String("out", "session.transcript", "transcript to write")
	flag.Parse()
	if err := run(*gw, *client, *out); err != nil {
		fmt.Fprintln(os.Stderr, "record:", err)
		os.Exit(1)
	}
}

func run(gwSock, clientSock, outPath string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f, err := os.Create(outPath)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "# recorded from charon by ipsec/vici/testdata/record on %s\n", time.Now().UTC().Format(time.RFC3339))
	recSock := filepath.Join(filepath.Dir(gwSock), "record.vici")
	rec, err := vicitest.NewRecorder(recSock, gwSock, f)
	if err != nil {
		return err
	}
	defer rec.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	gw := vici.New(vici.Config{Socket: recSock, Logger: log})
	defer gw.Close()
	cl := vici.New(vici.Config{Socket: clientSock, Logger: log})
	defer cl.Close()

	sub, err := gw.Subscribe(ctx)
	if err != nil {
		return err
	}
	defer sub.Close()
	if _, err := gw.Version(ctx); err != nil {
		return err
	}
	if err := cl.Initiate(ctx, vici.InitiateRequest{Child: "net", IKE: "home"}); err != nil {
		return fmt.Errorf("client initiate: %w", err)
	}
	wait := func(kind vici.EventKind) (vici.Event, error) {
		for {
			ev, err := sub.Next(ctx)
			if err != nil {
				return ev, err
			}
			fmt.Fprintf(os.Stderr, "event %s up=%v %s\n", ev.Kind, ev.Up, ev.IKE.String())
			if ev.Kind == kind {
				return ev, nil
			}
		}
	}
	if _, err := wait(vici.ChildUpdown); err != nil {
		return err
	}
	if _, err := gw.ListSAs(ctx, vici.ListFilter{}); err != nil {
		return err
	}
	if _, err := gw.Rekey(ctx, vici.RekeyRequest{Child: "net"}); err != nil {
		return err
	}
	if _, err := wait(vici.ChildRekey); err != nil {
		return err
	}
	if _, err := gw.Rekey(ctx, vici.RekeyRequest{IKE: "gw"}); err != nil {
		return err
	}
	if _, err := wait(vici.IKERekey); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // let the old SAs go
	if _, err := gw.ListSAs(ctx, vici.ListFilter{IKE: "gw"}); err != nil {
		return err
	}
	if _, err := gw.Redirect(ctx, vici.RedirectRequest{IKE: "nonexistent", Gateway: "203.0.113.12"}); err == nil {
		return fmt.Errorf("redirect of a nonexistent IKE SA succeeded")
	}
	if _, _, err := gw.Terminate(ctx, vici.TerminateRequest{IKE: "gw", Timeout: 5 * time.Second}); err != nil {
		return err
	}
	if _, err := wait(vici.IKEUpdown); err != nil {
		return err
	}
	return nil
}
