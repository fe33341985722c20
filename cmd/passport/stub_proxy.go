package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) proxyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "proxy",
		Short: "Run the enforcing sidecar proxy (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("proxy: not yet built") },
	}
}
