"""tritonrag: retrieval-augmented generation served by NVIDIA Triton.

The logic lives here as plain functions and classes; the Triton `model.py` files
under `model_repository/` only parse requests, call this package and build
responses.
"""

__version__ = "0.1.0"
