package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) authorityCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "authority",
		Short: "Run the passport authority (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("authority: not yet built") },
	}
}
