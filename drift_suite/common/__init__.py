"""Common ground under every stage: pure metrics, errors and exit codes, process identity, progress, quiet
dependency output, provenance, atomic file writes and the package version. Imports nothing above it."""
