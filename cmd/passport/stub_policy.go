package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// STUB: replaced by the component that owns this subcommand.
func (a *app) policyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "policy",
		Short: "Test, check and replay Rego policies (not yet built)",
		RunE:  func(*cobra.Command, []string) error { return errors.New("policy: not yet built") },
	}
}
