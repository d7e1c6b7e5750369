"""Format writers: one module per artifact format (see kexport.registry)."""
