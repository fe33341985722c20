package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) upCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Run the whole demo stack in one process (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("up: not yet built") },
	}
}
