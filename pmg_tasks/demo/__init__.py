"""The demo: a synthetic shop seeded into the embedded warehouse, and a one-command nightly run."""
