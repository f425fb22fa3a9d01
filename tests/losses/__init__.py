"""Tests for monai_diffreg.losses (a package, so test file names may repeat across tests/ folders)."""
