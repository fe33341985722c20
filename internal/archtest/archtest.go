// Package archtest holds the test that keeps the module's imports to the
// package map in docs/architecture.md.
package archtest
