"""Support for testing against a real daemon: distasks's own tests and benchmarks use it,
and so can the integration tests of an application that runs distasks.

The top layer: it may import anything, and nothing in the package imports it.
"""
