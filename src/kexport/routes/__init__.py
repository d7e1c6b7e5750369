"""Routes: the ways from a Keras backend to an artifact format.

:mod:`kexport.routes.rehost` rebuilds a model on another backend in a child
process and exports it there.
"""
