package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) healerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "healer",
		Short: "Run the auto-healer (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("healer: not yet built") },
	}
}
