"""What every HTTP route shares: route declaration, auth, body parsing, errors, OpenAPI."""
