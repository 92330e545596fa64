"""API errors: a status and a message naming the bad value; rendered as ``{"error": ..., "status": ...}``."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
