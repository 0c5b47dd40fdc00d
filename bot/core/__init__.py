"""The foundation every package builds on: settings, errors, events, locks, the store, threads.

Imports nothing else from the project (``tests/test_architecture.py`` checks it).
"""
