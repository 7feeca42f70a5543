"""Access control: labels, principals, and who may read what."""

from appliance.access.labels import Labels, LevelScale, Principal, parse_labels

__all__ = ["Labels", "LevelScale", "Principal", "parse_labels"]
