"""Training callbacks: objects with per-run state, told about each stage of a run."""

from tlcore.callbacks.base import Callback, CallbackList, select_callbacks

__all__ = ["Callback", "CallbackList", "select_callbacks"]
