"""One module per layer type of a :class:`~opendp_hybridad.nn.sequential.Sequential` model.

Each module defines a :class:`~opendp_hybridad.nn.protocol.Layer` subclass registered
with :func:`~opendp_hybridad.nn.registry.register_layer`; the registry imports every
module here on its first lookup.
"""
