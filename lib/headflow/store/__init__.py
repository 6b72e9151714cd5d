"""The run store (long runs write each unit as it finishes and resume) and the fingerprints that key it."""
