"""Tamper-evident audit log: canonical JSON entries, an RFC 6962 Merkle tree, signed checkpoints.

The modules here that an officer needs to verify an export (``canonical``, ``merkle``,
``checkpoint``) import only the standard library, ``cryptography`` and
``appliance.errors``, so the verifier runs on any machine.
"""
