package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) tokenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "token",
		Short: "Get a passport (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("token: not yet built") },
	}
}
