"""Format writers: one module per artifact format (the protocol: :mod:`kexport.formats._writer`;
the routes that use them: :mod:`kexport.routing`)."""
