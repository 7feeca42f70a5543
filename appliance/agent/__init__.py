"""Agentic RAG: route, plan, retrieve (access-filtered), assess, synthesize, verify, answer or abstain."""
