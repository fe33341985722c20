package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) chaosCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "chaos",
		Short: "Inject faults into the demo fleet (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("chaos: not yet built") },
	}
}
