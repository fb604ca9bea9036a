"""Credentials for the store clients, from a volume's `Credentials` (source.py).

- source.py: the `Credentials` type itself (no client libraries imported).
- aws.py: boto3 sessions (static keys, the default chain, web identity with refresh).
- web_identity.py: AssumeRoleWithWebIdentity with the pod's token, re-read on refresh.
- gcs.py: google-auth credentials for the native GCS backend.

This package imports nothing itself, so naming `Credentials` stays cheap. Nothing here
touches process-global state (no os.environ per mount).
"""
