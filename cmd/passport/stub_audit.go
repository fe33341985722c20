package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) auditCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the audit stream (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("audit: not yet built") },
	}
}
