"""Answer generation: the generator the models serve (`generator`), its prompts
(`prompting`) and the decode engine with continuous batching (`engine/`)."""
