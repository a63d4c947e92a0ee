"""One reconcile: the ports (Protocols and typed edge errors), the reconcile itself, the status
record, steering commands and the one-shot analysis. Talks to the world only through the ports.
"""
