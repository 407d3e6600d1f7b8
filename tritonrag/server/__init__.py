"""Operations: start a tritonserver with the RAG models (`launcher`), keep it serving
(`supervisor`) and render the model repository it runs from (`repository`)."""
