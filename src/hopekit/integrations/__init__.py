"""Bridges from hopekit to other libraries. Each submodule is the only place its library is imported:
``hopekit.integrations.hf`` (Hugging Face transformers; ``pip install 'hopekit[hf]'``)."""
