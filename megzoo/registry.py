"""The model registry's public names (``megzoo.registry.get_model`` ...); it lives in
:mod:`megzoo.models._registry`, beside the families that register themselves in it."""
from .models._registry import (ModelEntry, UnknownModelError, close_names, get_model, get_model_entry, get_weights,
                               list_models, model_entries, model_info, register_model)

__all__ = ["ModelEntry", "UnknownModelError", "register_model", "list_models", "get_model", "get_model_entry",
           "model_entries", "close_names", "get_weights", "model_info"]
