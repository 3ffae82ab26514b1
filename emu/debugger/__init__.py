"""The debugger: a UI-free session (session.py), its engines per backend, views and script mode."""
