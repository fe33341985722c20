package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) fleetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "fleet",
		Short: "Run the demo fleet (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("fleet: not yet built") },
	}
}
