"""fs-hw's NIR target: exact and compact NIR graphs of an FS network, an independent NIR
interpreter, and the import of fs-hw's own compact NIR files (see docs/nir.md)."""
