"""Evaluation: perplexity vs length under the field's three protocols, and the records schema."""

from .records import REQUIRED_FIELDS, append_records, git_commit, make_record, read_records

__all__ = ["REQUIRED_FIELDS", "append_records", "git_commit", "make_record", "read_records"]
