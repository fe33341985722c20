package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) agentCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "agent",
		Short: "Manage agents (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("agent: not yet built") },
	}
}
