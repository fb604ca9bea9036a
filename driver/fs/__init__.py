"""The bucket filesystem: object-store logic (`filesystem`) under a thin pyfuse3 adapter."""
