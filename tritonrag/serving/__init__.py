"""What the Triton `model.py` files share: request parsing and error responses (`glue`),
the RAG pipeline by BLS (`bls`), decoupled responses (`response_pump`) and the local link
between the generator forwarder and the decode engine (`engine_link`, `fanout`)."""
