"""Routing: the ways from a Keras backend to an artifact format (routes).

:mod:`kexport.routing.rehost` rebuilds a model on another backend in a child
process and exports it there.
"""
