"""The certificate vault: X.509 keys and certificates kept inside a PKCS#11 token."""
