"""Operations tools for a running Kestrel stack (local, LocalStack or AWS): redrive."""
