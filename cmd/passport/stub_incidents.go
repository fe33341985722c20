package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) incidentsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "incidents",
		Short: "List incidents (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("incidents: not yet built") },
	}
}
