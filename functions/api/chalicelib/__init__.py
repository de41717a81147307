"""HTTP glue of the scoring API: request parsing, responses, auth, metrics and the spec."""
